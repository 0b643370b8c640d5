//! Build contexts made in Rust: a tar stream with entries sorted and metadata fixed (so the same
//! files give the same bytes and the same digest), filtered by the project's `.dockerignore`.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobMatcher};
use sha2::{Digest, Sha256};

/// Paths never sent to the engine: ferry's own state and lock (written by builds, so it must not
/// feed them) and version control.
const ALWAYS_IGNORED: &[&str] = &[".ferry", ".git", "ferry.lock", "ferry.lock.tmp"];

/// `.dockerignore` rules, matched the way the Docker engine does: patterns are relative to the
/// context root, `*` and `?` stay within one path component, `**` spans any number of them, a
/// pattern that matches a directory excludes everything under it, the last matching rule wins
/// and `!` re-includes.
#[derive(Debug, Default)]
pub struct DockerIgnore {
    rules: Vec<(GlobMatcher, bool)>,
    has_exceptions: bool,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> DockerIgnore {
        let mut rules = Vec::new();
        let mut has_exceptions = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, pat) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pat = clean(pat);
            if pat.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(&pat)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .or_else(|_| Glob::new(&globset::escape(&pat)));
            if let Ok(g) = glob {
                has_exceptions |= negate;
                rules.push((g.compile_matcher(), negate));
            }
        }
        DockerIgnore {
            rules,
            has_exceptions,
        }
    }

    /// Reads `<root>/.dockerignore`; no file means no rules.
    pub fn load(root: &Path) -> io::Result<DockerIgnore> {
        match std::fs::read_to_string(root.join(".dockerignore")) {
            Ok(t) => Ok(DockerIgnore::parse(&t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DockerIgnore::default()),
            Err(e) => Err(e),
        }
    }

    /// Whether `rel` (a `/`-separated path inside the context) is left out.
    pub fn is_ignored(&self, rel: &str) -> bool {
        let mut ignored = false;
        for (m, negate) in &self.rules {
            if matches_or_parent(m, rel) {
                ignored = !negate;
            }
        }
        ignored
    }
}

fn matches_or_parent(m: &GlobMatcher, rel: &str) -> bool {
    if m.is_match(rel) {
        return true;
    }
    let mut p = rel;
    while let Some((parent, _)) = p.rsplit_once('/') {
        if m.is_match(parent) {
            return true;
        }
        p = parent;
    }
    false
}

/// Like Go's `filepath.Clean` on a relative pattern, with a leading `/` dropped.
fn clean(pat: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in pat.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out.join("/")
}

/// A deterministic tar being built: into memory (with the sha256 of its bytes at the end), or
/// into any writer.
pub struct Context<W: Write = Vec<u8>> {
    tar: tar::Builder<W>,
    files: usize,
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl Context {
    pub fn new() -> Context {
        Context::to_writer(Vec::new())
    }

    /// The finished tar and the hex sha256 of its bytes.
    pub fn finish(self) -> io::Result<(Vec<u8>, String)> {
        let bytes = self.into_inner()?;
        let digest = hex::encode(Sha256::digest(&bytes));
        Ok((bytes, digest))
    }
}

impl<W: Write> Context<W> {
    /// A tar written to `w` as entries are added, so nothing is held in memory.
    pub fn to_writer(w: W) -> Context<W> {
        let mut tar = tar::Builder::new(w);
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        Context { tar, files: 0 }
    }

    /// Adds a file from memory.
    pub fn add_bytes(&mut self, name: &str, data: &[u8], mode: u32) -> io::Result<()> {
        let mut h = header(tar::EntryType::Regular, mode);
        h.set_size(data.len() as u64);
        self.tar.append_data(&mut h, name, data)?;
        self.files += 1;
        Ok(())
    }

    /// Adds a file from disk under `name`, executable or not as it is on disk.
    pub fn add_file(&mut self, name: &str, path: &Path) -> io::Result<()> {
        let meta = std::fs::metadata(path)?;
        self.add_file_with_mode(name, path, exec_mode(&meta))
            .map(|_| ())
    }

    /// Adds a file from disk under `name` with `mode`, whatever its mode on disk, and returns its
    /// size. A symlink gives its target's content.
    pub fn add_file_with_mode(&mut self, name: &str, path: &Path, mode: u32) -> io::Result<u64> {
        let f = std::fs::File::open(path)?;
        // The size is taken from the open file, and exactly that many bytes are written: a file
        // that shrinks meanwhile fails here instead of leaving a header that lies about its data.
        let size = f.metadata()?.len();
        let mut h = header(tar::EntryType::Regular, mode);
        h.set_size(size);
        self.tar.append_data(&mut h, name, Exact::new(f, size))?;
        self.files += 1;
        Ok(size)
    }

    /// Adds a directory entry; `name` without a trailing `/`.
    pub fn add_dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        let mut h = header(tar::EntryType::Directory, mode);
        h.set_size(0);
        self.tar.append_data(
            &mut h,
            format!("{}/", name.trim_end_matches('/')),
            io::empty(),
        )
    }

    /// Adds a file of `size` bytes that `write` writes straight into the tar, for content made
    /// while the tar is written (an image layer inside an image archive). Fails when `write`
    /// writes another number of bytes.
    pub fn add_written(
        &mut self,
        name: &str,
        size: u64,
        mode: u32,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut h = header(tar::EntryType::Regular, mode);
        h.set_size(size);
        // No extension header is written here, so the name must fit the header's own field.
        h.set_path(name)?;
        h.set_cksum();
        let out = self.tar.get_mut();
        out.write_all(h.as_bytes())?;
        let mut counted = Counted {
            inner: &mut *out,
            len: 0,
        };
        write(&mut counted)?;
        if counted.len != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{name}: {} bytes written where {size} were announced",
                    counted.len
                ),
            ));
        }
        let pad = (512 - size % 512) % 512;
        out.write_all(&[0u8; 512][..pad as usize])?;
        self.files += 1;
        Ok(())
    }

    /// Adds every file of `dir` under `prefix`, in sorted order, skipping what `ignore` excludes.
    /// Symlinks are kept as links when they stay inside `dir`, and refused when they leave it:
    /// a build context must never carry files from outside the project.
    pub fn add_tree(&mut self, dir: &Path, prefix: &str, ignore: &DockerIgnore) -> io::Result<()> {
        let root = dir.canonicalize()?;
        self.walk(&root, &root, "", prefix, ignore)
    }

    fn walk(
        &mut self,
        root: &Path,
        dir: &Path,
        rel: &str,
        prefix: &str,
        ignore: &DockerIgnore,
    ) -> io::Result<()> {
        let mut entries: Vec<(String, PathBuf)> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())))
            .collect::<io::Result<_>>()?;
        entries.sort();
        for (name, path) in entries {
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if rel.is_empty() && ALWAYS_IGNORED.contains(&name.as_str()) {
                continue;
            }
            let ignored = ignore.is_ignored(&child);
            let meta = std::fs::symlink_metadata(&path)?;
            let target = join(prefix, &child);
            if meta.file_type().is_symlink() {
                if ignored {
                    continue;
                }
                let link = std::fs::read_link(&path)?;
                let resolved = path.canonicalize().ok();
                if !resolved.as_ref().is_some_and(|r| r.starts_with(root)) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{} is a symlink to {} outside the project; a build context must not leave the project (copy the file in, or add it to .dockerignore)",
                            path.display(),
                            link.display()
                        ),
                    ));
                }
                let mut h = header(tar::EntryType::Symlink, 0o777);
                h.set_size(0);
                self.tar.append_link(&mut h, &target, &link)?;
            } else if meta.is_dir() {
                // A directory excluded with no `!` rule to bring anything back: skip it whole.
                if ignored && !ignore.has_exceptions {
                    continue;
                }
                if !ignored {
                    self.add_dir(&target, 0o755)?;
                }
                self.walk(root, &path, &child, prefix, ignore)?;
            } else if meta.is_file() && !ignored {
                self.add_file(&target, &path)?;
            }
        }
        Ok(())
    }

    pub fn files(&self) -> usize {
        self.files
    }

    /// Ends the archive and gives back the writer.
    pub fn into_inner(self) -> io::Result<W> {
        self.tar.into_inner()
    }
}

/// Reads exactly `len` bytes of `inner`: fewer is an error, more are left unread.
struct Exact<R> {
    inner: io::Take<R>,
    left: u64,
}

impl<R: Read> Exact<R> {
    fn new(inner: R, len: u64) -> Exact<R> {
        Exact {
            inner: inner.take(len),
            left: len,
        }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file shrank while it was read ({} bytes short)",
                    self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts what goes through.
struct Counted<W> {
    inner: W,
    len: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn join(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{}/{rel}", prefix.trim_end_matches('/'))
    }
}

/// Fixed owner and time so the bytes depend only on names, contents and the executable bit.
fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn exec_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn dockerignore_follows_engine_rules() {
        let ig = DockerIgnore::parse(
            "# comment\n/artifacts\n*.pyc\n**/__pycache__\ndata/\n!data/keep.csv\nnotes/*.md\n",
        );
        assert!(ig.is_ignored("artifacts"));
        assert!(ig.is_ignored("artifacts/model.onnx"), "children of a match");
        assert!(ig.is_ignored("x.pyc"));
        assert!(!ig.is_ignored("src/x.pyc"), "* does not cross /");
        assert!(ig.is_ignored("src/pkg/__pycache__/m.cpython-311.pyc"));
        assert!(ig.is_ignored("data/customers.csv"));
        assert!(!ig.is_ignored("data/keep.csv"), "! re-includes");
        assert!(ig.is_ignored("notes/a.md"));
        assert!(!ig.is_ignored("notes/sub/a.md"));
        assert!(!ig.is_ignored("train.py"));
    }

    #[test]
    fn tree_is_deterministic_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("pkg")).unwrap();
        std::fs::create_dir_all(d.join("artifacts")).unwrap();
        std::fs::create_dir_all(d.join(".ferry/runs")).unwrap();
        std::fs::write(d.join("train.py"), "print(1)\n").unwrap();
        std::fs::write(d.join("pkg/b.py"), "b\n").unwrap();
        std::fs::write(d.join("pkg/a.py"), "a\n").unwrap();
        std::fs::write(d.join("artifacts/model.onnx"), "m").unwrap();
        std::fs::write(d.join(".ferry/runs/x"), "x").unwrap();
        let ig = DockerIgnore::parse("artifacts/\n");
        let build = || {
            let mut c = Context::new();
            c.add_tree(d, "src", &ig).unwrap();
            c.finish().unwrap()
        };
        let (bytes, digest) = build();
        assert_eq!(
            names(&bytes),
            vec!["src/pkg/", "src/pkg/a.py", "src/pkg/b.py", "src/train.py"]
        );
        // Touching a file without changing it changes nothing.
        std::fs::write(d.join("train.py"), "print(1)\n").unwrap();
        assert_eq!(build().1, digest);
        std::fs::write(d.join("train.py"), "print(2)\n").unwrap();
        assert_ne!(build().1, digest);
    }

    #[test]
    fn entries_written_in_place_read_back_and_sizes_are_held_to() {
        let mut c = Context::to_writer(Vec::new());
        c.add_dir("layer", 0o755).unwrap();
        c.add_written("layer/data", 700, 0o644, |w| w.write_all(&[7u8; 700]))
            .unwrap();
        c.add_bytes("after", b"x", 0o644).unwrap();
        let bytes = c.into_inner().unwrap();
        assert_eq!(names(&bytes), vec!["layer/", "layer/data", "after"]);
        let mut a = tar::Archive::new(bytes.as_slice());
        let mut e = a.entries().unwrap().nth(1).unwrap().unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        assert_eq!(data, vec![7u8; 700]);

        let mut c = Context::to_writer(Vec::new());
        let err = c
            .add_written("short", 10, 0o644, |w| w.write_all(b"abc"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn symlinks_out_of_the_project_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        let mut c = Context::new();
        let err = c
            .add_tree(dir.path(), "", &DockerIgnore::default())
            .unwrap_err();
        assert!(err.to_string().contains("outside the project"), "{err}");
        // Ignored, it is fine.
        let mut c = Context::new();
        c.add_tree(dir.path(), "", &DockerIgnore::parse("link"))
            .unwrap();
    }
}
