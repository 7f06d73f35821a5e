//! Shared test helpers: a self-deleting temporary directory and a small mdBook-like page builder.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "effllm-data-{name}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `rel` below the directory, creating parents.
    pub fn write(&self, rel: &str, contents: &str) {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An mdBook-style page: head with title and scripts, sidebar, menu, `<main>` with `body`, navigation.
pub fn mdbook_page(lang: &str, title: &str, book_title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE HTML>
<html lang="{lang}" class="light sidebar-visible" dir="ltr">
    <head>
        <!-- Book generated using mdBook -->
        <meta charset="UTF-8">
        <title>{title} - {book_title}</title>
        <script>
            const path_to_root = "";
            if (a < b && "<main>") {{ }}
        </script>
        <style>main {{ color: red; }}</style>
    </head>
    <body>
    <nav id="mdbook-sidebar" class="sidebar" aria-label="Table of contents">
        <ol class="chapter"><li class="chapter-item"><a href="ch01.html">1. Sidebar entry</a></li></ol>
    </nav>
    <div id="mdbook-page-wrapper" class="page-wrapper">
        <div class="page">
            <div id="mdbook-menu-bar" class="menu-bar sticky">
                <button id="theme-toggle" class="icon-button" type="button">Change theme</button>
                <h1 class="menu-title">{book_title}</h1>
            </div>
            <div id="mdbook-content" class="content">
                <main>
                    {body}
                </main>
                <nav class="nav-wrapper" aria-label="Page navigation">
                    <a rel="next prefetch" href="ch02.html" class="mobile-nav-chapters next">Next chapter</a>
                </nav>
            </div>
        </div>
    </div>
    <script src="book.js"></script>
    </body>
</html>
"#
    )
}

/// A redirect page as mdBook writes for `output.html.redirect` entries.
pub fn redirect_page(target: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>Redirecting...</title>
    <meta http-equiv="refresh" content="0; URL={target}">
    <link rel="canonical" href="{target}">
  </head>
  <body>
      <p>Redirecting to... <a href="{target}">{target}</a>.</p>
  </body>
</html>
"#
    )
}
