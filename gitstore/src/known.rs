//! Which objects the store already holds, read once per bulk write (loose names by listing the
//! fan-out directories, packed ones from the mapped indexes) instead of one `stat` per object.

use std::path::Path;

use gix::odb::pack::index;
use gix::ObjectId;

/// A snapshot of the store's objects. A miss can only cause a redundant copy in a new pack.
pub(crate) struct Known {
    loose: gix::hashtable::HashSet,
    packs: Vec<index::File>,
}

impl Known {
    /// Reads the snapshot from `objects_dir`; `None` if it cannot be read completely (the
    /// caller then asks the object database per object).
    pub(crate) fn scan(objects_dir: &Path) -> Option<Known> {
        let mut known = Known {
            loose: Default::default(),
            packs: Vec::new(),
        };
        if objects_dir.join("info/alternates").exists() {
            return None;
        }
        for dir in std::fs::read_dir(objects_dir).ok()? {
            let dir = dir.ok()?;
            let fanout = dir.file_name();
            let Some(fanout) = fanout.to_str().filter(|n| n.len() == 2 && is_hex(n)) else {
                continue;
            };
            let files = match std::fs::read_dir(dir.path()) {
                Ok(files) => files,
                // Pruned since the listing: nothing loose there any more.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => return None,
            };
            for file in files {
                let name = file.ok()?.file_name();
                if let Some(rest) = name.to_str().filter(|n| n.len() == 38 && is_hex(n)) {
                    if let Ok(id) = ObjectId::from_hex(format!("{fanout}{rest}").as_bytes()) {
                        known.loose.insert(id);
                    }
                }
            }
        }
        let pack_dir = objects_dir.join("pack");
        let entries = match std::fs::read_dir(&pack_dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Some(known),
            Err(_) => return None,
        };
        for entry in entries {
            let path = entry.ok()?.path();
            if path.extension().is_some_and(|ext| ext == "idx") {
                // An index removed by a concurrent repack is no loss: its objects moved.
                if let Ok(file) = index::File::at(&path, gix::hash::Kind::Sha1) {
                    known.packs.push(file);
                }
            }
        }
        Some(known)
    }

    pub(crate) fn contains(&self, id: &ObjectId) -> bool {
        self.loose.contains(id) || self.packs.iter().any(|pack| pack.lookup(id).is_some())
    }
}

fn is_hex(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}
