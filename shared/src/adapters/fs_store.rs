//! A directory as an object store, for local runs. Writes are atomic: a temporary file, then a link.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;

use crate::domain::image_format::ImageFormat;
use crate::ports::store::{NewObject, ObjectStore, PutOutcome, StoreError, StoredObject, Upload, image_stem};

/// Objects are files below `root`; a key's `/` are directories.
#[derive(Debug, Clone)]
pub struct FsObjectStore {
    root: PathBuf,
}

impl FsObjectStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The file a key is stored in; refuses keys that could leave `root`.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        let relative = Path::new(key);
        let safe = !key.is_empty() && relative.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(StoreError::Failed(format!(
                "key {key:?} is not a relative path inside the store"
            )));
        }
        Ok(self.root.join(relative))
    }

    async fn write_temp(&self, path: &Path, body: &Bytes) -> Result<PathBuf, StoreError> {
        let dir = path.parent().unwrap_or(&self.root);
        tokio::fs::create_dir_all(dir).await.map_err(|e| io_error(dir, e))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
        let temp = dir.join(format!(".{name}.{}.tmp", rand::random::<u64>()));
        tokio::fs::write(&temp, body).await.map_err(|e| io_error(&temp, e))?;
        Ok(temp)
    }
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    let message = format!("{}: {e}", path.display());
    match e.kind() {
        ErrorKind::Interrupted | ErrorKind::TimedOut | ErrorKind::WouldBlock => StoreError::Unavailable(message),
        _ => StoreError::Failed(message),
    }
}

/// Adds the keys of every file below `dir` (temporary files aside) to `keys`.
fn collect_keys(root: &Path, dir: &Path, keys: &mut Vec<String>) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        if path.is_dir() {
            collect_keys(root, &path, keys)?;
        } else if let Ok(relative) = path.strip_prefix(root)
            && !relative
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            keys.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// A file written part by part into a temporary file, renamed into place by `finish`.
#[derive(Debug)]
pub struct FsUpload {
    temp: PathBuf,
    path: PathBuf,
    file: tokio::fs::File,
}

impl Upload for FsUpload {
    async fn part(&mut self, body: Bytes) -> Result<(), StoreError> {
        tokio::io::AsyncWriteExt::write_all(&mut self.file, &body)
            .await
            .map_err(|e| io_error(&self.temp, e))
    }

    async fn finish(mut self, last: Bytes) -> Result<(), StoreError> {
        self.part(last).await?;
        tokio::io::AsyncWriteExt::flush(&mut self.file)
            .await
            .map_err(|e| io_error(&self.temp, e))?;
        tokio::fs::rename(&self.temp, &self.path)
            .await
            .map_err(|e| io_error(&self.path, e))
    }
}

impl ObjectStore for FsObjectStore {
    type Upload = FsUpload;

    async fn upload(&self, key: &str, _content_type: &str) -> Result<FsUpload, StoreError> {
        let path = self.path_of(key)?;
        let temp = self.write_temp(&path, &Bytes::new()).await?;
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&temp)
            .await
            .map_err(|e| io_error(&temp, e))?;
        Ok(FsUpload { temp, path, file })
    }

    #[tracing::instrument(skip(self, object), fields(bytes = object.body.len()))]
    async fn put_if_absent(&self, key: &str, object: NewObject) -> Result<PutOutcome, StoreError> {
        let path = self.path_of(key)?;
        let temp = self.write_temp(&path, &object.body).await?;
        // A hard link fails if the target exists: an atomic create-if-absent.
        let linked = tokio::fs::hard_link(&temp, &path).await;
        let _ = tokio::fs::remove_file(&temp).await;
        match linked {
            Ok(()) => Ok(PutOutcome::Created),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    #[tracing::instrument(skip(self, object), fields(bytes = object.body.len()))]
    async fn put(&self, key: &str, object: NewObject) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let temp = self.write_temp(&path, &object.body).await?;
        tokio::fs::rename(&temp, &path).await.map_err(|e| io_error(&path, e))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_error(&path, e)),
            _ => Ok(()),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            // Only the directory the prefix names can hold matching keys.
            let dir = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
            let mut keys = Vec::new();
            collect_keys(&root, &root.join(dir), &mut keys)?;
            keys.retain(|k| k.starts_with(&prefix));
            keys.sort();
            Ok(keys)
        })
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))?
    }

    async fn find_image(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let stem = image_stem(key);
        for format in ImageFormat::ALL {
            let key = format!("{stem}.{}", format.extension());
            let path = self.path_of(&key)?;
            match tokio::fs::metadata(&path).await {
                Ok(meta) => {
                    return Ok(Some(StoredObject {
                        key,
                        size: meta.len(),
                        content_type: format.content_type().into(),
                    }));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(body: &'static [u8]) -> NewObject {
        NewObject {
            body: Bytes::from_static(body),
            content_type: "image/png".into(),
            cache_control: None,
            metadata: vec![],
        }
    }

    #[tokio::test]
    async fn put_if_absent_keeps_the_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsObjectStore::new(dir.path());
        assert_eq!(
            store.put_if_absent("images/a/x.png", object(b"one")).await,
            Ok(PutOutcome::Created)
        );
        assert_eq!(
            store.put_if_absent("images/a/x.png", object(b"two")).await,
            Ok(PutOutcome::AlreadyExists)
        );
        assert_eq!(
            store.get("images/a/x.png").await.unwrap().unwrap(),
            Bytes::from_static(b"one")
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("images/a")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files are removed");
    }

    #[tokio::test]
    async fn find_image_finds_any_extension() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsObjectStore::new(dir.path());
        assert_eq!(store.find_image("t/sku").await, Ok(None));
        store.put("images/t/sku.jpg", object(b"jpeg")).await.unwrap();
        let found = store.find_image("t/sku").await.unwrap().unwrap();
        assert_eq!(
            (found.key.as_str(), found.size, found.content_type.as_str()),
            ("images/t/sku.jpg", 4, "image/jpeg")
        );
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let store = FsObjectStore::new("/tmp/root");
        for key in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(store.path_of(key).is_err(), "{key}");
        }
    }
}
