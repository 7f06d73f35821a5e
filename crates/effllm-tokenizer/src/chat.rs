//! Chat templates: [`ChatMessage`] and rendering of `tokenizer.chat_template` with `minijinja`.

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value, context};

use crate::error::{Result, TokenizerError};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChatMessage {
    /// `"system"`, `"user"` or `"assistant"` (templates may accept others).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Renders a Hugging Face-style Jinja chat template: `trim_blocks` and `lstrip_blocks` on, variables `messages`
/// (a list of `{role, content}` maps), `add_generation_prompt`, `bos_token` and `eos_token` (undefined when
/// `None`), and the function `raise_exception(msg)`.
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String> {
    let err = |e: Error| TokenizerError::ChatTemplate(format!("{e:#}"));
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(err)?;
    env.set_syntax(syntax);
    env.add_function("raise_exception", raise_exception);
    let messages: Vec<Value> =
        messages.iter().map(|m| context! { role => m.role.as_str(), content => m.content.as_str() }).collect();
    let ctx = context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token.map(Value::from).unwrap_or(Value::UNDEFINED),
        eos_token => eos_token.map(Value::from).unwrap_or(Value::UNDEFINED),
    };
    env.render_str(template, ctx).map_err(err)
}
