//! The default data: the Rust documentation corpus tokenized by SmolLM2's tokenizer.

use effllm_data::{Corpus, CorpusOptions, FnEncoder, Split, SplitConfig, TokenCache};
use effllm_gguf::{GgufFile, ReadOptions, model_cache};
use effllm_tokenizer::{GgufTokenizer, PreTokenizerChoice};

use crate::config::TrainConfig;
use crate::data::TrainData;
use crate::{Result, TrainError};

/// The training and validation splits of the Rust-docs corpus (deterministic split by document), tokenized by
/// SmolLM2-135M-Instruct's tokenizer (the model is fetched on first use; token lists are cached on disk), packed
/// into rows of `seq_len + 1` tokens with the EOS token between documents. `say` hears what is happening.
pub fn rust_docs(cfg: &TrainConfig, say: &mut dyn FnMut(&str)) -> Result<TrainData> {
    if model_cache::smollm2_path().is_none() {
        say("SmolLM2-135M-Instruct (for its tokenizer) is not cached yet; fetching it once");
    }
    let path = model_cache::fetch_smollm2(|l| say(l)).map_err(|e| TrainError::Data(format!("model: {e}")))?;
    let file = GgufFile::open(&path, &ReadOptions::default())
        .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    let tok = GgufTokenizer::from_gguf(&file, PreTokenizerChoice::FromMetadata)
        .map_err(|e| TrainError::Data(format!("tokenizer: {e}")))?;
    let encoder = FnEncoder::new(tok.fingerprint(), |t: &str| {
        tok.encode(t, false).map_err(|e| Box::new(e) as effllm_data::EncodeError)
    });
    say("loading the Rust-docs corpus");
    let root = effllm_data::docs_dir(cfg.data.docs_dir.as_deref()).map_err(|e| TrainError::Data(e.to_string()))?;
    let corpus = Corpus::load(&root, &CorpusOptions::default()).map_err(|e| TrainError::Data(e.to_string()))?;
    let cache = TokenCache::at_default().map_err(|e| TrainError::Data(e.to_string()))?;
    let split = SplitConfig::default();
    let (train, s1) =
        cache.split(&corpus, Split::Train, &split, &encoder).map_err(|e| TrainError::Data(e.to_string()))?;
    let (val, s2) =
        cache.split(&corpus, Split::Validation, &split, &encoder).map_err(|e| TrainError::Data(e.to_string()))?;
    say(&format!(
        "corpus: {} training documents ({} tokens, cache {s1:?}), {} validation documents ({} tokens, cache {s2:?})",
        train.num_documents(),
        train.num_tokens(),
        val.num_documents(),
        val.num_tokens()
    ));
    TrainData::from_documents(&train, &val, tok.vocab_size(), tok.eos_id(), cfg.data.seq_len, tok.fingerprint())
}
