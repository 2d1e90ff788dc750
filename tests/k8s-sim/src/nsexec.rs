//! Linux namespaces for pods: a sandbox process holds the pod's network and UTS namespaces
//! (only loopback, hostname = pod name); each container gets its own mount namespace with
//! its volumes and a private /tmp bind-mounted over the node's filesystem; exec enters a
//! container's namespaces.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

#[derive(Debug, Clone)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Bring `lo` up in the current network namespace (a fresh one has it down).
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain syscalls on a zero-initialised ifreq; runs in the forked child only.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let result = libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &ifr);
        libc::close(sock);
        check(result)
    }
}

/// The pod sandbox: `sleep infinity` in new network and UTS namespaces, or in the
/// node's own with `host_network` (`spec.hostNetwork`).
pub fn sandbox_command(hostname: &str, host_network: bool) -> io::Result<Command> {
    let hostname =
        CString::new(hostname).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut command = Command::new("sleep");
    command
        .arg("infinity")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            check(libc::setsid())?;
            if host_network {
                return Ok(());
            }
            check(libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWUTS))?;
            check(libc::sethostname(
                hostname.as_ptr(),
                hostname.as_bytes().len(),
            ))?;
            loopback_up()
        });
    }
    Ok(command)
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// A detached copy of the mount tree at `path` (like `mount --rbind` without a target yet).
fn open_tree_clone(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let path = cstring(path)?;
    // SAFETY: open_tree(2) with a valid path; the returned fd is owned by us.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Namespace files of a process, opened by the parent before forking.
pub struct NamespaceFiles {
    files: Vec<File>,
}

impl NamespaceFiles {
    pub fn of(pid: i32, kinds: &[&str]) -> io::Result<Self> {
        let files = kinds
            .iter()
            .map(|kind| File::open(format!("/proc/{pid}/ns/{kind}")))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(NamespaceFiles { files })
    }

    fn fds(&self) -> Vec<i32> {
        self.files.iter().map(|f| f.as_raw_fd()).collect()
    }
}

/// A container's main process: joins the sandbox's net/UTS namespaces, gets a private mount
/// namespace with `mounts`, and starts in `workdir`. Its own session/process group.
pub fn container_command(
    argv: &[String],
    env: &[(String, String)],
    workdir: &Path,
    sandbox: &NamespaceFiles,
    mounts: &[Mount],
    user: Option<RunAs>,
) -> io::Result<Command> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "container has no command"))?;
    let mut command = Command::new(program);
    command.args(args).env_clear().envs(env.iter().cloned());
    let fds = sandbox.fds();
    // Each source is cloned now as a detached mount tree (open_tree) and attached in the
    // child with move_mount, so a mount made earlier in the child (e.g. the private /tmp)
    // cannot hide a source path below it.
    let mut trees = Vec::new();
    let mut prepared = Vec::new();
    for mount in mounts {
        let tree = open_tree_clone(&mount.source)?;
        prepared.push((tree.as_raw_fd(), cstring(&mount.target)?, mount.read_only));
        trees.push(tree);
    }
    let root = CString::new("/").map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let empty = CString::new("").map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let workdir = cstring(workdir)?;
    // SAFETY: only async-signal-safe syscalls between fork and exec; all strings prepared before.
    unsafe {
        command.pre_exec(move || {
            // Keeps the detached trees open until the fork (they close on exec).
            let _ = &trees;
            check(libc::setsid())?;
            for fd in &fds {
                check(libc::setns(*fd, 0))?;
            }
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (tree, target, read_only) in &prepared {
                let result = libc::syscall(
                    libc::SYS_move_mount,
                    *tree,
                    empty.as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                );
                if result == -1 {
                    return Err(io::Error::last_os_error());
                }
                if *read_only {
                    check(libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
            }
            if libc::chdir(workdir.as_ptr()) == -1 {
                check(libc::chdir(root.as_ptr()))?;
            }
            drop_to(user)
        });
    }
    Ok(command)
}

/// `securityContext.runAsUser` / `runAsGroup`: the identity a container's processes
/// (its main process, execs and probes) run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Become `user` (no supplementary groups), last, after the namespaces and mounts that
/// need root. Called between fork and exec: only async-signal-safe syscalls.
fn drop_to(user: Option<RunAs>) -> io::Result<()> {
    let Some(user) = user else { return Ok(()) };
    // SAFETY: plain syscalls on integers.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(user.gid))?;
        check(libc::setuid(user.uid))?;
    }
    Ok(())
}

/// A command run inside a running container (exec, readiness probes).
pub fn exec_command(
    argv: &[String],
    env: &[(String, String)],
    workdir: &Path,
    container_pid: i32,
    user: Option<RunAs>,
) -> io::Result<(Command, NamespaceFiles)> {
    let (program, args) = argv.split_first().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "you must specify at least 1 command",
        )
    })?;
    let namespaces = NamespaceFiles::of(container_pid, &["net", "uts", "mnt"])?;
    let fds = namespaces.fds();
    let root = CString::new("/").map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let workdir = cstring(workdir)?;
    let mut command = Command::new(program);
    command.args(args).env_clear().envs(env.iter().cloned());
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            check(libc::setsid())?;
            for fd in &fds {
                check(libc::setns(*fd, 0))?;
            }
            if libc::chdir(workdir.as_ptr()) == -1 {
                check(libc::chdir(root.as_ptr()))?;
            }
            drop_to(user)
        });
    }
    Ok((command, namespaces))
}

/// Signal a whole process group; a group that is already gone is fine.
pub fn kill_group(pgid: i32, signal: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals the group.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

pub fn kill_pid(pid: i32, signal: libc::c_int) {
    if pid > 1 {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(pid, signal);
        }
    }
}
