//! `switchboard config check` and `switchboard config example`.
//!
//! The example is generated, so it cannot drift: its keys and defaults are
//! the configuration structs' own (`Config::default()` serialized), and the
//! comment above each key is the meaning docs/configuration.md gives it. A
//! test fails when a setting of the code has no row in that page, or a row
//! of the page names no setting: adding a field to a struct in config.rs
//! (or to `AppConfig`) without documenting it is caught there.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;
use switchboard_core::AppConfig;

use crate::config::{Config, Tls};

/// The page documenting every setting, compiled in for its meanings.
const DOCS: &str = include_str!("../../../docs/configuration.md");

/// One row of a settings table of docs/configuration.md.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DocRow {
    /// The table (`""` for top-level settings, `apps` for `[[apps]]`).
    section: String,
    /// The key as the page writes it (`webhooks[].url` for nested ones).
    key: String,
    meaning: String,
}

/// The settings rows of docs/configuration.md, in page order.
fn doc_rows() -> Vec<DocRow> {
    let mut rows = Vec::new();
    let mut section: Option<String> = None;
    for line in DOCS.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading_section(heading);
            continue;
        }
        let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) else {
            continue;
        };
        let Some((key, rest)) = row.split_once('`') else {
            continue;
        };
        // `| key | default | meaning |`: the meaning is the last cell.
        let cells: Vec<&str> = rest.trim_end_matches('|').splitn(3, " | ").collect();
        let meaning = cells.get(2).map_or("", |m| m.trim());
        rows.push(DocRow {
            section: section.clone(),
            key: key.to_string(),
            meaning: meaning.to_string(),
        });
    }
    rows
}

/// The table a `## ` heading documents: ``## `[gate]`: connections`` is
/// `gate`, ``## `[[apps]]`...`` is `apps`, `## Top level` is `""`; other
/// headings document no settings.
fn heading_section(heading: &str) -> Option<String> {
    if heading.trim() == "Top level" {
        return Some(String::new());
    }
    let inner = heading.split('`').nth(1)?;
    let name = inner.trim_start_matches('[').trim_end_matches(']');
    (inner.starts_with('[') && !name.is_empty()).then(|| name.to_string())
}

/// What the example shows of one table: its settings with their defaults,
/// or, for a table absent by default (`[tls]`, `[[apps]]`), a sample of it
/// commented out.
struct Table {
    name: String,
    header: String,
    fields: serde_json::Map<String, Value>,
    commented: bool,
}

/// Every table of the configuration, from the structs' defaults.
fn tables() -> Vec<Table> {
    let Value::Object(root) = serde_json::to_value(Config::default()).unwrap_or(Value::Null) else {
        return Vec::new();
    };
    let mut top = serde_json::Map::new();
    let mut tables = Vec::new();
    for (key, value) in root {
        match (key.as_str(), value) {
            (_, Value::Object(fields)) => tables.push(Table {
                header: format!("[{key}]"),
                name: key,
                fields,
                commented: false,
            }),
            // Absent by default: shown with sample values, commented out.
            ("tls", Value::Null) => tables.push(Table {
                name: key,
                header: "[tls]".into(),
                fields: object(Tls {
                    cert: PathBuf::from("/etc/switchboard/tls/cert.pem"),
                    key: PathBuf::from("/etc/switchboard/tls/key.pem"),
                }),
                commented: true,
            }),
            ("apps", Value::Array(_)) => tables.push(Table {
                name: key,
                header: "[[apps]]".into(),
                fields: object(AppConfig::default()),
                commented: true,
            }),
            (_, value) => {
                top.insert(key, value);
            }
        }
    }
    tables.insert(
        0,
        Table {
            name: String::new(),
            header: String::new(),
            fields: top,
            commented: false,
        },
    );
    tables
}

fn object(value: impl serde::Serialize) -> serde_json::Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

/// A TOML literal for a default; `None` for an unset option.
fn toml_value(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        // A JSON string literal is a valid TOML basic string.
        Value::String(_) | Value::Number(_) | Value::Bool(_) => v.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().filter_map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .filter_map(|(k, v)| Some(format!("{k} = {}", toml_value(v)?)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
    })
}

/// `text` as `# ` comment lines of at most ~78 columns.
fn comment(out: &mut String, prefix: &str, text: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + word.len() > 74 {
            out.push_str(&format!("{prefix}# {line}\n"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&format!("{prefix}# {line}\n"));
    }
}

/// A commented TOML file of every setting with its default.
pub fn example() -> String {
    let rows = doc_rows();
    let meaning = |section: &str, key: &str| {
        rows.iter()
            .find(|r| r.section == section && r.key == key)
            .map(|r| r.meaning.clone())
    };
    let mut out = String::from(
        "# Switchboard configuration: every setting with its default.\n\
         # Generated by `switchboard config example` from the code; the meanings\n\
         # are docs/configuration.md's. Check a file with `switchboard config check FILE`.\n",
    );
    // In the page's order: tables by their section, keys by their row.
    let position = |section: &str, key: Option<&str>| {
        rows.iter()
            .position(|r| r.section == section && key.is_none_or(|k| r.key == k))
            .unwrap_or(usize::MAX)
    };
    let mut tables = tables();
    tables.sort_by_key(|t| position(&t.name, None));
    for table in tables {
        let mut fields: Vec<(&String, &Value)> = table.fields.iter().collect();
        fields.sort_by_key(|(k, _)| position(&table.name, Some(k.as_str())));
        let prefix = if table.commented { "# " } else { "" };
        out.push('\n');
        if !table.header.is_empty() {
            if table.commented {
                out.push_str("# Absent by default; an example:\n");
            }
            out.push_str(&format!("{prefix}{}\n", table.header));
        }
        for (key, value) in fields {
            if let Some(m) = meaning(&table.name, key) {
                comment(&mut out, prefix, &m);
            }
            match toml_value(value) {
                Some(v) => out.push_str(&format!("{prefix}{key} = {v}\n")),
                None => out.push_str(&format!("{prefix}# {key} = (unset by default)\n")),
            }
        }
    }
    out
}

/// Validates a configuration file as `serve --config` reads it: TOML
/// syntax, unknown keys and wrong types (each named with the file's line
/// and column), then the apps' settings.
pub fn check_file(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config: Config = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let (line, col) = line_col(&text, s.start);
                format!(":{line}:{col}")
            })
            .unwrap_or_default();
        anyhow::anyhow!("{}{at}: {}", path.display(), e.message().trim())
    })?;
    switchboard_core::Apps::new(config.apps.clone())
        .with_context(|| format!("{}: invalid [[apps]]", path.display()))?;
    Ok(config)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
/// The settings the code has, as `section.key` (`apps` keys up to their
/// first `.` or `[`), for the docs test.
fn code_keys() -> std::collections::BTreeSet<String> {
    tables()
        .iter()
        .flat_map(|t| t.fields.keys().map(move |k| qualified(&t.name, k)))
        .collect()
}

#[cfg(test)]
fn qualified(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

#[cfg(test)]
/// The settings docs/configuration.md documents, in the same form.
fn doc_keys() -> std::collections::BTreeSet<String> {
    doc_rows()
        .iter()
        .map(|r| {
            let key = r.key.split(['.', '[']).next().unwrap_or(&r.key);
            qualified(&r.section, key)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_documented_and_every_documented_setting_exists() {
        let code = code_keys();
        let docs = doc_keys();
        let undocumented: Vec<_> = code.difference(&docs).collect();
        let unknown: Vec<_> = docs.difference(&code).collect();
        assert!(
            undocumented.is_empty(),
            "settings with no row in docs/configuration.md (add one to the table of their section): {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "docs/configuration.md documents settings the code does not have: {unknown:?}"
        );
        // The parser found the tables at all (a heading format change would
        // otherwise make both sets small and equal).
        for key in [
            "data_dir",
            "gate.max_frame_bytes",
            "tls.cert",
            "apps.jwt_secret",
        ] {
            assert!(code.contains(key), "{key} missing from {code:?}");
        }
    }

    #[test]
    fn the_example_is_the_defaults() {
        let text = example();
        let parsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(
            serde_json::to_value(parsed).unwrap(),
            serde_json::to_value(Config::default()).unwrap()
        );
        // Every setting appears, with its meaning from the docs.
        for key in code_keys() {
            let key = key.rsplit('.').next().unwrap();
            assert!(
                text.contains(&format!("{key} = ")),
                "{key} not in the example"
            );
        }
        assert!(text.contains("# largest frame accepted, header included"));
        assert!(text.contains("# [[apps]]\n"));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sb.toml");
        std::fs::write(
            &path,
            "node = \"a\"\n\n[gate]\nmax_frame_bytes = 1024\nack_timout_ms = 5\n",
        )
        .unwrap();
        let e = check_file(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:5:1: ", path.display())), "{e}");
        assert!(e.contains("ack_timout_ms"), "{e}");
    }
}
