//! Python package versions (PEP 440) as far as ordering them and telling two apart needs:
//! "newest first" lists and whether a pinned version exists. A version that does not parse
//! sorts below every one that does, by its text.

use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// As the index wrote it, for messages.
    pub text: String,
    key: Option<Key>,
}

/// Field order is PEP 440's sort order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    epoch: u64,
    /// Trailing zeros dropped: `1.0` and `1` are the same version.
    release: Vec<u64>,
    pre: Pre,
    /// `None` sorts first: `1.0` < `1.0.post1`.
    post: Option<u64>,
    dev: Dev,
    local: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Pre {
    /// A dev release of the release itself (`1.0.dev1`) sorts before its pre-releases.
    DevOnly,
    Alpha(u64),
    Beta(u64),
    Rc(u64),
    Final,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Dev {
    Dev(u64),
    None,
}

impl Version {
    pub fn parse(text: &str) -> Version {
        Version {
            text: text.to_string(),
            key: parse_key(text),
        }
    }

    /// A pre-release or development release, which "newest" lists leave out when final
    /// releases exist (as pip does).
    pub fn is_pre(&self) -> bool {
        self.key
            .as_ref()
            .is_some_and(|k| k.pre != Pre::Final || k.dev != Dev::None)
    }

    /// The same version by PEP 440 (`2.0` = `2.0.0` = `v2.0`); unparsed ones by their text.
    pub fn same(&self, other: &Version) -> bool {
        match (&self.key, &other.key) {
            (Some(a), Some(b)) => a == b,
            _ => self.text.eq_ignore_ascii_case(&other.text),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.key, &other.key) {
            (Some(a), Some(b)) => a.cmp(b).then_with(|| self.text.cmp(&other.text)),
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (None, None) => self.text.cmp(&other.text),
        }
    }
}

/// Whether a `Requires-Python` specifier set (`>=3.9,<3.13`, `!=3.0.*`) admits Python
/// `python` (`3.11`, taken as `3.11.0` as pip does). A clause this cannot read admits it: the
/// answer only decides which versions a message offers.
pub fn python_allows(spec: &str, python: &str) -> bool {
    let Some(have) = parse_key(python) else {
        return true;
    };
    spec.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .all(|clause| clause_allows(clause, &have).unwrap_or(true))
}

fn clause_allows(clause: &str, have: &Key) -> Option<bool> {
    let op_end = clause
        .find(|c: char| !matches!(c, '<' | '>' | '=' | '!' | '~'))
        .unwrap_or(clause.len());
    let (op, v) = (&clause[..op_end], clause[op_end..].trim());
    if let Some(prefix) = v.strip_suffix(".*") {
        // Not through `parse_key`, whose dropping of trailing zeros would make `3.0.*` `3.*`.
        let want: Vec<u64> = prefix
            .split('.')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let mut release = have.release.clone();
        release.resize(release.len().max(want.len()), 0);
        let matches = release.starts_with(&want) && have.epoch == 0;
        return match op {
            "==" => Some(matches),
            "!=" => Some(!matches),
            _ => None,
        };
    }
    let want = parse_key(v)?;
    Some(match op {
        ">=" => *have >= want,
        ">" => *have > want,
        "<=" => *have <= want,
        "<" => *have < want,
        "==" | "===" => *have == want,
        "!=" => *have != want,
        "~=" => {
            // `~=2.2.0` is `>=2.2.0, ==2.2.*`: the last release part written may grow. Counted
            // from the text, as the parsed release has lost its trailing zeros.
            let written = v
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
                .unwrap_or("")
                .trim_end_matches('.')
                .split('.')
                .count();
            let keep = written.saturating_sub(1).max(1);
            let pad = |r: &[u64]| {
                let mut r = r.to_vec();
                r.resize(r.len().max(keep), 0);
                r.truncate(keep);
                r
            };
            *have >= want && pad(&have.release) == pad(&want.release)
        }
        _ => return None,
    })
}

fn parse_key(text: &str) -> Option<Key> {
    let lower = text.trim().to_ascii_lowercase();
    let s = lower.strip_prefix('v').unwrap_or(&lower);
    let (s, local) = match s.split_once('+') {
        Some((v, l)) => (v, l.split(['.', '-', '_']).map(str::to_string).collect()),
        None => (s, Vec::new()),
    };
    let (epoch, s) = match s.split_once('!') {
        Some((e, rest)) => (e.parse().ok()?, rest),
        None => (0, s),
    };
    let release_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let release_text = s[..release_end].trim_end_matches('.');
    let tail = &s[release_text.len()..];
    let mut release: Vec<u64> = release_text
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    while release.len() > 1 && release.last() == Some(&0) {
        release.pop();
    }

    let (mut pre, mut post, mut dev) = (None, None, None);
    let mut rest = tail;
    while !rest.is_empty() {
        let (label, n, after) = segment(rest)?;
        match label {
            "a" | "alpha" if pre.is_none() && post.is_none() && dev.is_none() => {
                pre = Some(Pre::Alpha(n))
            }
            "b" | "beta" if pre.is_none() && post.is_none() && dev.is_none() => {
                pre = Some(Pre::Beta(n))
            }
            "rc" | "c" | "pre" | "preview" if pre.is_none() && post.is_none() && dev.is_none() => {
                pre = Some(Pre::Rc(n))
            }
            "post" | "rev" | "r" | "" if post.is_none() && dev.is_none() => post = Some(n),
            "dev" if dev.is_none() => dev = Some(n),
            _ => return None,
        }
        rest = after;
    }
    let pre = match (pre, post, dev) {
        (Some(p), _, _) => p,
        (None, None, Some(_)) => Pre::DevOnly,
        _ => Pre::Final,
    };
    Some(Key {
        epoch,
        release,
        pre,
        post,
        dev: dev.map_or(Dev::None, Dev::Dev),
        local,
    })
}

/// One `[sep]label[sep]N` suffix segment: `.post1`, `rc2`, `-1` (an implicit post release),
/// `a` (number 0). Returns the label, the number and what follows.
fn segment(s: &str) -> Option<(&str, u64, &str)> {
    let had_dash = s.starts_with('-');
    let s = s.strip_prefix(['.', '-', '_']).unwrap_or(s);
    let label_end = s
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(s.len());
    let label = &s[..label_end];
    if label.is_empty() && !had_dash {
        return None;
    }
    let s = &s[label_end..];
    let digits_from = if label.is_empty() {
        s
    } else {
        s.strip_prefix(['.', '-', '_']).unwrap_or(s)
    };
    let digits_end = digits_from
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits_from.len());
    if digits_end == 0 {
        if label.is_empty() {
            return None;
        }
        return Some((label, 0, s));
    }
    let n = digits_from[..digits_end].parse().ok()?;
    Some((label, n, &digits_from[digits_end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s)
    }

    #[test]
    fn pep440_order() {
        let ordered = [
            "1.0.dev1",
            "1.0a1.dev1",
            "1.0a1",
            "1.0a2",
            "1.0b1",
            "1.0rc1",
            "1.0",
            "1.0+local",
            "1.0.post1.dev1",
            "1.0.post1",
            "1.0.1",
            "1.2",
            "1.10",
            "2!0.1",
        ];
        for w in ordered.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
    }

    #[test]
    fn spellings_of_one_version_are_the_same() {
        assert!(v("2.0").same(&v("2.0.0")));
        assert!(v("2.0").same(&v("v2")));
        assert!(v("1.0rc1").same(&v("1.0-rc.1")));
        assert!(v("1.0c1").same(&v("1.0rc1")));
        assert!(v("1.0-1").same(&v("1.0.post1")));
        assert!(v("1.0alpha").same(&v("1.0a0")));
        assert!(!v("2.2.3").same(&v("2.2.30")));
    }

    #[test]
    fn pre_and_dev_releases_are_flagged() {
        assert!(v("2.0rc1").is_pre());
        assert!(v("2.0.dev3").is_pre());
        assert!(!v("2.0.post1").is_pre());
        assert!(!v("2.0").is_pre());
    }

    #[test]
    fn requires_python_is_checked_like_pip() {
        for (spec, ok) in [
            (">=3.9", true),
            (">=3.12", false),
            (">=3.8,<3.11", false),
            (">=3.8, <3.12", true),
            ("!=3.11.*", false),
            ("==3.11.*", true),
            ("==3.*", true),
            ("!=3.0.*,!=3.1.*,>=2.7", true),
            ("~=3.10", true),
            ("~=3.12", false),
            ("~=3.11.0", true),
            ("~=3.10.0", false),
            (">3.11", false),
            ("<=3.11", true),
            ("", true),
            ("nonsense", true),
        ] {
            assert_eq!(python_allows(spec, "3.11"), ok, "{spec}");
        }
    }

    #[test]
    fn unparsed_versions_sort_lowest() {
        assert!(v("banana") < v("0.0.1"));
        assert!(v("1.0-foo-bar").key.is_none());
    }
}
