//! Getting a command's text to the host without putting it in any process's argv.
//!
//! `sh -c '<script>'` would show the script, secrets and all, to every user of the host
//! in `ps` (and `/proc/PID/cmdline`) for as long as it runs. Instead the command line
//! only holds a fixed reader, and the script follows on the channel's stdin:
//!
//! ```text
//! exec request: sh -c '<READER>'          (no secret: the same for every command)
//! stdin:        <script lines>\n<token>\n<the command's own stdin...>
//! ```
//!
//! The reader collects lines with the `read` builtin up to the random token line (a
//! shell's `read` takes one byte at a time from a pipe, so nothing after the token is
//! consumed), then `eval`s them: the rest of stdin is the command's stdin, as with
//! `sh -c`. If stdin ends before the token the script is not run at all (status 125), so
//! a cut connection never runs half a script. Shell variables are never exported, so the
//! script is not in the environment of the processes it starts either.
//!
//! The reader is one line without `'`, `!` or `\`, so that any login shell sshd hands
//! it to (bash, dash, zsh, csh/tcsh, fish) passes it to `sh` unchanged.
//!
//! The persistent shell (see `shell`) gets the script in a here-document instead
//! ([`heredoc`]): it is read by the shell's parser, not by a program.

use bytes::Bytes;

use crate::transport::TransportError;

/// Exit status of the reader when the script did not arrive whole.
pub(crate) const SCRIPT_NOT_RECEIVED: u32 = 125;

/// A random token for the end of a script; no script contains it by chance, and none
/// can contain it on purpose (it is chosen after the script is rendered).
pub(crate) fn token() -> Result<String, TransportError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| TransportError::Protocol(format!("no randomness for a marker: {e}")))?;
    Ok(format!("ferry-end-{}", hex::encode(bytes)))
}

/// A random mark for one remote command (or one persistent shell): an argument of its
/// `sh` that nothing else on the host has, so [`stop_script`] can find the command's
/// process group again when ferry gives up on it (Ctrl-C, a timeout). Not a secret: it
/// is in `ps`, and tells nobody anything.
pub(crate) fn mark() -> Result<String, TransportError> {
    let mut bytes = [0u8; 12];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| TransportError::Protocol(format!("no randomness for a marker: {e}")))?;
    Ok(format!("ferry-run-{}", hex::encode(bytes)))
}

/// Stops what ferry started under `mark`: every process group with a process whose
/// command line has the mark gets SIGTERM (never the script's own group).
///
/// Why not the SSH protocol's `signal` request alone: sshd honours it only in its
/// unprivileged session process, and a root login has none (`session signalling
/// requires privilege separation`), so for the most common login of all it does
/// nothing. Linux's `/proc`; elsewhere it finds nothing and stops nothing.
pub(crate) fn stop_script(mark: &str) -> String {
    format!(
        "own=$(sed 's/.*) //' /proc/$$/stat 2>/dev/null | cut -d' ' -f3)\n\
         for p in /proc/[0-9]*; do\n\
         case \"$(tr '\\0' ' ' < \"$p/cmdline\" 2>/dev/null)\" in *' {mark}'*) ;; *) continue ;; esac\n\
         g=$(sed 's/.*) //' \"$p/stat\" 2>/dev/null | cut -d' ' -f3)\n\
         [ -n \"$g\" ] && [ \"$g\" != \"$own\" ] && [ \"$g\" -gt 1 ] && kill -TERM \"-$g\" 2>/dev/null\n\
         done\n\
         exit 0\n"
    )
}

/// The `sh` program that reads a script from stdin up to `token` and runs it.
pub(crate) fn reader(token: &str) -> String {
    format!(
        "__ferry_n=$(echo;echo _);__ferry_n=${{__ferry_n%_}};__ferry_s=;\
         while :;do IFS= read -r __ferry_l||{{ echo \"ferry: the command text did not arrive whole\" >&2;exit {SCRIPT_NOT_RECEIVED};}};\
         [ \"$__ferry_l\" = {token} ]&&break;__ferry_s=$__ferry_s$__ferry_l$__ferry_n;done;\
         unset __ferry_l __ferry_n;set -- \"$__ferry_s\";unset __ferry_s;eval \"shift;$1\""
    )
}

/// What goes on stdin before the command's own input: the script and the token line.
pub(crate) fn preamble(script: &str, token: &str) -> Bytes {
    let mut text = String::with_capacity(script.len() + token.len() + 2);
    text.push_str(script);
    if !script.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(token);
    text.push('\n');
    Bytes::from(text)
}

/// A command for the persistent shell that runs `script` in a subshell, the script in
/// a here-document (quoted delimiter: nothing in it is expanded) that is collected and
/// `eval`ed like [`reader`] does.
pub(crate) fn heredoc(script: &str, token: &str) -> String {
    let mut text = String::with_capacity(script.len() + 300);
    text.push_str(
        "( __ferry_s=; while IFS= read -r __ferry_l; do __ferry_s=$__ferry_s$__ferry_l'\n'; done <<'",
    );
    text.push_str(token);
    text.push_str("'\n");
    text.push_str(script);
    if !script.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(token);
    text.push_str(
        "\nunset __ferry_l; set -- \"$__ferry_s\"; unset __ferry_s; eval \"shift;$1\"\n)",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn run_reader(stdin: &[u8]) -> std::process::Output {
        let t = "ferry-end-0123";
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(reader(t))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// The stop script finds the marked command's process group (a group of its own,
    /// as sshd makes one per session) and ends all of it, the child of the marked shell
    /// too; another group is left alone.
    #[test]
    fn the_stop_script_ends_the_marked_group_and_nothing_else() {
        let m = mark().unwrap();
        let start = |mark: &str| {
            Command::new("setsid")
                .args(["sh", "-c", "sleep 300 & echo $!; wait", "sh", mark])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut marked = start(&m);
        let other_mark = mark().unwrap();
        let mut other = start(&other_mark);
        let pid_of = |child: &mut std::process::Child| {
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
                &mut line,
            )
            .unwrap();
            line.trim().to_string()
        };
        let (sleep_marked, sleep_other) = (pid_of(&mut marked), pid_of(&mut other));
        let out = Command::new("sh")
            .arg("-c")
            .arg(stop_script(&m))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // The marked shell ends once its group got SIGTERM; wait() is the bound.
        let status = marked.wait().unwrap();
        assert!(!status.success(), "{status:?}");
        let gone = |pid: &str| {
            (0..100).any(|_| {
                let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| !s.contains(") Z "));
                if alive {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                !alive
            })
        };
        assert!(gone(&sleep_marked), "the marked command's child survived");
        assert!(!gone_now(&sleep_other), "the other group was stopped too");
        let _ = Command::new("sh")
            .arg("-c")
            .arg(stop_script(&other_mark))
            .output();
        let _ = other.wait();
    }

    fn gone_now(pid: &str) -> bool {
        !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    }

    #[test]
    fn the_reader_runs_the_script_and_leaves_stdin_to_it() {
        let script = "x='a  b\\'; printf '%s|' \"$x\" \"$#\"\nif true; then\n  cat\nfi\nexit 3";
        let mut input = preamble(script, "ferry-end-0123").to_vec();
        input.extend_from_slice(b"line one\nlast");
        let out = run_reader(&input);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "a  b\\|0|line one\nlast"
        );
    }

    #[test]
    fn a_script_cut_short_never_runs() {
        let out = run_reader(b"touch /tmp/ferry-never\necho ran\n");
        assert_eq!(out.status.code(), Some(SCRIPT_NOT_RECEIVED as i32));
        assert_eq!(out.stdout, b"");
        assert!(String::from_utf8_lossy(&out.stderr).contains("did not arrive"));
    }

    #[test]
    fn the_reader_survives_any_login_shell_quoting() {
        let r = reader("ferry-end-x");
        assert!(!r.contains(['\'', '!', '\\', '\n']), "{r}");
    }

    #[test]
    fn heredoc_runs_in_a_subshell_without_stdin() {
        let script = "v=1; echo \"$v $#\"; cat; exit 4";
        let line = format!(
            "{}; echo \"status $? v=$v\"\n",
            heredoc(script, "ferry-end-9")
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(line)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1 0\nstatus 4 v=\n");
    }
}
