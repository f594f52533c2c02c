//! Who can read or write a path: OS accounts, permission bits, and (as root)
//! an exact check with the account's own credentials.

use super::DeployError;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An OS account with its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary one included.
    pub groups: Vec<u32>,
}

impl Account {
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Looks an account up by name.
pub fn account(name: &str) -> Result<Account, DeployError> {
    let user = nix::unistd::User::from_name(name).ok().flatten().ok_or_else(|| DeployError::UnknownUser(name.to_string()))?;
    let groups = std::ffi::CString::new(name)
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, user.gid).ok())
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|| vec![user.gid.as_raw()]);
    Ok(Account { name: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw(), groups })
}

/// UID_MIN and UID_MAX of /etc/login.defs (1000 and 60000 without it).
fn human_uid_range() -> (u32, u32) {
    let defs = std::fs::read_to_string("/etc/login.defs").unwrap_or_default();
    let value = |key: &str, default: u32| {
        defs.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(key)).then(|| f.next().and_then(|v| v.parse().ok())).flatten()
            })
            .next_back()
            .unwrap_or(default)
    };
    (value("UID_MIN", 1000), value("UID_MAX", 60000))
}

/// Every human account (uid in UID_MIN..=UID_MAX) the account database
/// lists, except `except`. Directory services that do not enumerate (e.g.
/// SSSD's default) list none of theirs: name those with --as-user.
pub fn human_accounts(except: Option<u32>) -> Vec<Account> {
    let (min, max) = human_uid_range();
    let mut names = Vec::new();
    // SAFETY: getpwent iterates the account database; each entry is copied
    // before the next call. The doctor is single-threaded.
    unsafe {
        libc::setpwent();
        loop {
            let entry = libc::getpwent();
            if entry.is_null() {
                break;
            }
            let uid = (*entry).pw_uid;
            if (min..=max).contains(&uid) && Some(uid) != except {
                names.push(std::ffi::CStr::from_ptr((*entry).pw_name).to_string_lossy().into_owned());
            }
        }
        libc::endpwent();
    }
    names.sort();
    names.dedup();
    names.iter().filter_map(|n| account(n).ok()).collect()
}

/// What an account may do with a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Open a file for reading, or list a folder.
    pub read: bool,
    /// Open a file for writing, or create and remove entries in a folder.
    pub write: bool,
}

impl Access {
    pub fn any(self) -> bool {
        self.read || self.write
    }
}

/// The rwx bits that apply to `who` (`None`: any other account).
fn bits(meta: &std::fs::Metadata, who: Option<&Account>) -> u32 {
    let mode = meta.mode();
    match who {
        Some(a) if a.uid == 0 => 7,
        Some(a) if meta.uid() == a.uid => (mode >> 6) & 7,
        Some(a) if a.in_group(meta.gid()) => (mode >> 3) & 7,
        _ => mode & 7,
    }
}

/// Access from the permission bits of `path` and of every folder above it
/// (each must be searchable). POSIX ACLs are not read.
pub fn mode_access(path: &Path, who: Option<&Account>) -> Access {
    let Ok(meta) = std::fs::metadata(path) else { return Access::default() };
    let reachable = path.ancestors().skip(1).all(|dir| std::fs::metadata(dir).is_ok_and(|m| bits(&m, who) & 1 != 0));
    if !reachable {
        return Access::default();
    }
    let b = bits(&meta, who);
    if meta.is_dir() { Access { read: b & 4 != 0, write: b & 2 != 0 && b & 1 != 0 } } else { Access { read: b & 4 != 0, write: b & 2 != 0 } }
}

/// The most paths an exact check reports accessible per account.
const MAX_HITS: usize = 10_000;

/// Access of `account` to each path, checked by a child process that takes
/// the account's uid, gid and groups and asks the kernel (`access(2)`: ACLs
/// and read-only mounts included). Needs root. Returns `(index, access)` of
/// the paths with any access, at most 10,000.
pub fn exact_access(account: &Account, paths: &[PathBuf]) -> Result<Vec<(usize, Access)>, String> {
    let cpaths: Vec<std::ffi::CString> = paths.iter().filter_map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()).collect();
    if cpaths.len() != paths.len() {
        return Err("a path contains a NUL byte".into());
    }
    let account = account.clone();
    crate::sandbox::in_child(std::time::Duration::from_secs(120), move || -> Result<Vec<(usize, Access)>, String> {
        use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
        let groups: Vec<Gid> = account.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        let gid = Gid::from_raw(account.gid);
        let uid = Uid::from_raw(account.uid);
        setgroups(&groups)
            .and_then(|()| setresgid(gid, gid, gid))
            .and_then(|()| setresuid(uid, uid, uid))
            .map_err(|e| format!("cannot take the account's identity: {e}"))?;
        let mut hits = Vec::new();
        for (i, p) in cpaths.iter().enumerate() {
            // SAFETY: `p` is a NUL-terminated path.
            let read = unsafe { libc::access(p.as_ptr(), libc::R_OK) } == 0;
            // SAFETY: as above.
            let write = unsafe { libc::access(p.as_ptr(), libc::W_OK) } == 0;
            if read || write {
                hits.push((i, Access { read, write }));
                if hits.len() >= MAX_HITS {
                    break;
                }
            }
        }
        Ok(hits)
    })
    .map_err(|e| e.to_string())?
}

/// The most entries a walk of the owner's folders visits.
pub const MAX_WALK: usize = 100_000;

/// `root` and everything under it (symlinks are listed, not followed), at
/// most [`MAX_WALK`] entries; the flag says whether the walk stopped early.
pub fn walk(root: &Path) -> (Vec<PathBuf>, bool) {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if out.len() >= MAX_WALK {
            return (out, true);
        }
        let is_dir = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
        if is_dir && let Ok(entries) = std::fs::read_dir(&p) {
            stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        }
        out.push(p);
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        crate::test_dir(&format!("perms-{name}"))
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn mode_access_follows_owner_group_other_and_the_folders_above() {
        let dir = tmp("mode");
        chmod(&dir, 0o755);
        let f = dir.join("t.csv");
        std::fs::write(&f, "x").unwrap();
        // Root reads everything: as root (CI), give the file an ordinary owner.
        if std::fs::metadata(&f).unwrap().uid() == 0 {
            std::os::unix::fs::chown(&f, Some(4_000_003), None).unwrap();
        }
        let meta = std::fs::metadata(&f).unwrap();
        let owner = Account { name: "o".into(), uid: meta.uid(), gid: 4_000_000, groups: vec![] };
        let member = Account { name: "m".into(), uid: 4_000_001, gid: meta.gid(), groups: vec![] };
        let other = Account { name: "x".into(), uid: 4_000_002, gid: 4_000_002, groups: vec![] };
        chmod(&f, 0o640);
        assert_eq!(mode_access(&f, Some(&owner)), Access { read: true, write: true });
        assert_eq!(mode_access(&f, Some(&member)), Access { read: true, write: false });
        assert_eq!(mode_access(&f, Some(&other)), Access::default());
        assert_eq!(mode_access(&f, None), Access::default());
        chmod(&f, 0o204);
        // The owner class is exact: the owner cannot read although others can.
        assert_eq!(mode_access(&f, Some(&owner)), Access { read: false, write: true });
        assert_eq!(mode_access(&f, None), Access { read: true, write: false });
        // A folder above that others cannot search hides the file.
        chmod(&dir, 0o750);
        assert_eq!(mode_access(&f, None), Access::default());
        chmod(&dir, 0o755);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn walk_is_bounded_and_lists_everything_below() {
        let dir = tmp("walk");
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/", dir.join("a/root")).unwrap();
        let (paths, stopped) = walk(&dir);
        assert!(!stopped);
        assert_eq!(paths.len(), 5, "{paths:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
