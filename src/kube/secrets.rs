//! The environment's secrets: an env file (`KEY=value` lines) the spec names, read at promote
//! time only. Values are held in memory and sent to the cluster in a Secret; they are never
//! printed, logged, hashed into a label or written into an image or a ConfigMap.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::KubeError;

/// Secret values by variable name. `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values, for the Secret object only.
    pub(crate) fn values(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Reads an env file: `KEY=value`, `export KEY=value`, `# comments`, blank lines, and values
    /// in single quotes (literal) or double quotes (with `\n`, `\"`, `\\` escapes).
    pub fn read(path: &Path) -> Result<Secrets, KubeError> {
        let text = std::fs::read_to_string(path).map_err(|e| KubeError::Secrets {
            path: path.to_path_buf(),
            line: 0,
            message: if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist; create it (KEY=value lines) or remove `secrets` from the environment"
                    .into()
            } else {
                e.to_string()
            },
        })?;
        parse(&text).map_err(|(line, message)| KubeError::Secrets {
            path: PathBuf::from(path),
            line,
            message,
        })
    }
}

fn parse(text: &str) -> Result<Secrets, (usize, String)> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err((n, "expected KEY=value".into()));
        };
        let key = key.trim();
        if key.is_empty()
            || key.starts_with(|c: char| c.is_ascii_digit())
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            // The name only: the line may hold a value.
            return Err((
                n,
                format!("{key:?} is not a variable name (letters, digits and '_')"),
            ));
        }
        let value = unquote(value.trim()).map_err(|m| (n, format!("{key}: {m}")))?;
        if out.insert(key.to_string(), value).is_some() {
            return Err((n, format!("{key} is set twice")));
        }
    }
    Ok(Secrets(out))
}

fn unquote(v: &str) -> Result<String, &'static str> {
    if let Some(rest) = v.strip_prefix('\'') {
        return rest
            .strip_suffix('\'')
            .map(str::to_string)
            .ok_or("unterminated single quote");
    }
    if let Some(rest) = v.strip_prefix('"') {
        let inner = rest.strip_suffix('"').ok_or("unterminated double quote")?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('"' | '\\' | '$')) => out.push(c),
                Some(c) => {
                    out.push('\\');
                    out.push(c);
                }
                None => return Err("a trailing backslash"),
            }
        }
        return Ok(out);
    }
    // Unquoted: an inline comment needs a space before `#`.
    let v = match v.find(" #") {
        Some(i) => v[..i].trim_end(),
        None => v,
    };
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_parse_like_docker_and_shells_write_them() {
        let s = parse(
            "# db\nexport DB_URL=postgres://u:p@h/db\nAPI_KEY='a b #c'\nMSG=\"line\\nnext \\\"q\\\"\"\nEMPTY=\nPLAIN=x # note\n",
        )
        .unwrap();
        let v = s.values();
        assert_eq!(v["DB_URL"], "postgres://u:p@h/db");
        assert_eq!(v["API_KEY"], "a b #c");
        assert_eq!(v["MSG"], "line\nnext \"q\"");
        assert_eq!(v["EMPTY"], "");
        assert_eq!(v["PLAIN"], "x");
    }

    #[test]
    fn bad_lines_name_the_line_and_never_the_value() {
        let (line, m) = parse("A=1\nnot a pair\n").unwrap_err();
        assert_eq!((line, m.as_str()), (2, "expected KEY=value"));
        let (line, m) = parse("A=1\nA=2\n").unwrap_err();
        assert_eq!((line, m.as_str()), (2, "A is set twice"));
        let (_, m) = parse("1X=hunter2\n").unwrap_err();
        assert!(!m.contains("hunter2"), "{m}");
        let (_, m) = parse("K=\"hunter2\n").unwrap_err();
        assert!(!m.contains("hunter2") && m.contains("unterminated"), "{m}");
    }

    #[test]
    fn debug_shows_names_only() {
        let s = parse("TOKEN=hunter2\n").unwrap();
        let shown = format!("{s:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
