//! Privilege escalation through sudo, without a PTY and without the password ever in argv.
//!
//! The command becomes
//! `sudo -k -S -p <PROMPT> -u USER -- sh -c 'echo "$0" >&2; <READER>' <OK>`
//! (`sudo -n ...` when no password is configured), where `<READER>` reads the script
//! from stdin (see `script`: the script is never in argv). The client watches stderr:
//! sudo's `<PROMPT>` is answered with the password line; `<OK>` means sudo accepted and
//! the shell is starting, so only then are the script and the caller's stdin bytes let
//! through. `-k` makes sudo ask
//! every time a password is needed, so a cached credential can never make the password line
//! land in the command's stdin; a NOPASSWD rule simply means no prompt appears.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::command::Cmd;
use crate::secrets::Secrets;
use crate::transport::{BecomeSpec, TransportError};

/// What the client needs to drive one sudo invocation.
pub(crate) struct BecomeHandshake {
    pub user: String,
    /// sudo's password prompt (unique per command).
    pub prompt: String,
    /// Printed on stderr by the shell sudo started.
    pub ok: String,
    pub password: Option<String>,
}

/// Announces that sudo started the shell (`$0` is the OK token).
// No `'`, `!` or backslash, like the reader: the login shell (csh/tcsh too) passes it whole.
const STARTER: &str = "echo \"$0\" >&2; ";

/// The full command line for the login shell, and its handshake: sudo runs `shell -c`
/// with `program` (a fixed reader, see `script`) after announcing itself.
/// `mark` goes last, as `$1` (see `script::mark`).
pub(crate) fn wrap(
    program: &str,
    shell: &str,
    spec: &BecomeSpec,
    mark: &str,
) -> (String, BecomeHandshake) {
    let user = if spec.user.is_empty() {
        "root".to_string()
    } else {
        spec.user.clone()
    };
    let token = unique_token();
    let prompt = format!("[ferry-sudo-{token}] password:");
    let ok = format!("ferry-become-ok-{token}");
    let sudo = match spec.password {
        Some(_) => Cmd::new("sudo").args(["-k", "-S", "-p", prompt.as_str()]),
        None => Cmd::new("sudo").arg("-n"),
    };
    let line = sudo
        .args(["-u", user.as_str(), "--", shell, "-c"])
        .arg(format!("{STARTER}{program}"))
        .arg(ok.as_str())
        .arg(mark)
        .to_shell();
    (
        line,
        BecomeHandshake {
            user,
            prompt,
            ok,
            password: spec.password.clone(),
        },
    )
}

/// Refuse a sudo password that sudo cannot take whole: `sudo -S` reads one line, so
/// whatever follows a newline (or a carriage return, which ends the line for a terminal
/// driver and for some sudo builds) would be passed on to the command's stdin; sudo also
/// cuts at a NUL byte.
pub(crate) fn check_password(spec: &BecomeSpec, host: &str) -> Result<(), TransportError> {
    let Some(password) = &spec.password else {
        return Ok(());
    };
    let bad = [
        ('\n', "a newline"),
        ('\r', "a carriage return"),
        ('\0', "a NUL byte"),
    ]
    .into_iter()
    .find(|(c, _)| password.contains(*c));
    match bad {
        None => Ok(()),
        Some((_, what)) => Err(TransportError::Become {
            host: host.to_string(),
            reason: format!(
                "the become password contains {what}; sudo reads the password as one line, \
                 so the rest would be sent to the command's input. Refusing to use it: \
                 remove the {what} from the variable named by become_password_env"
            ),
        }),
    }
}

/// Hex token unique enough to never appear in a command's own output by chance.
fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(crate) fn count(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Explain why sudo did not start the command, from what it printed before giving up.
pub(crate) fn failure(
    hs: &BecomeHandshake,
    stderr_before: &[u8],
    status: Option<u32>,
    host: &str,
    secrets: &Secrets,
) -> TransportError {
    let text = String::from_utf8_lossy(stderr_before).replace(hs.prompt.as_str(), "");
    let text = secrets.mask(&text);
    let lower = text.to_ascii_lowercase();
    let reason = if lower.contains("a password is required") {
        format!(
            "sudo needs a password to run commands as {} and none was given \
             (set the become password for this host)",
            hs.user
        )
    } else if lower.contains("must have a tty") || lower.contains("requiretty") {
        "sudo insists on a terminal (`Defaults requiretty`); ferry never allocates one — \
         allow this user without requiretty"
            .to_string()
    } else if hs.password.is_some()
        && (lower.contains("incorrect password")
            || lower.contains("sorry, try again")
            || count(stderr_before, hs.prompt.as_bytes()) > 1)
    {
        "incorrect sudo password".to_string()
    } else if lower.contains("not in the sudoers")
        || lower.contains("is not allowed to")
        || lower.contains("may not run sudo")
    {
        format!(
            "the login user may not run commands as {} with sudo: {}",
            hs.user,
            first_line(&text)
        )
    } else if lower.contains("sudo: not found") || lower.contains("sudo: command not found") {
        "sudo is not installed on the host".to_string()
    } else {
        let detail = first_line(&text);
        match status {
            Some(s) if detail.is_empty() => format!("sudo exited with status {s}"),
            Some(s) => format!("sudo exited with status {s}: {detail}"),
            None if detail.is_empty() => "sudo did not start the command".to_string(),
            None => format!("sudo did not start the command: {detail}"),
        }
    };
    TransportError::Become {
        host: host.to_string(),
        reason,
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_in_the_command_line() {
        let spec = BecomeSpec {
            user: String::new(),
            password: Some("hunter2-secret".into()),
        };
        let (line, hs) = wrap("id -u", "sh", &spec, "ferry-run-1");
        assert!(!line.contains("hunter2"), "{line}");
        assert!(line.ends_with(" ferry-run-1"), "{line}");
        assert!(line.starts_with("sudo -k -S -p "), "{line}");
        assert!(line.contains("-u root -- sh -c"), "{line}");
        assert!(line.contains(&hs.ok));
        assert_eq!(hs.user, "root");

        let (line, _) = wrap(
            "id",
            "sh",
            &BecomeSpec {
                user: "postgres".into(),
                password: None,
            },
            "ferry-run-2",
        );
        assert!(line.starts_with("sudo -n -u postgres -- sh -c"), "{line}");
    }

    #[test]
    fn a_password_with_a_line_break_is_refused() {
        for pw in ["first\nsecond", "first\r", "a\0b"] {
            let spec = BecomeSpec {
                user: "root".into(),
                password: Some(pw.into()),
            };
            let e = check_password(&spec, "h").unwrap_err().to_string();
            assert!(e.contains("become password contains"), "{e}");
            assert!(!e.contains("first") && !e.contains("second"), "{e}");
        }
        let ok = BecomeSpec {
            user: "root".into(),
            password: Some("pass word!".into()),
        };
        assert!(check_password(&ok, "h").is_ok());
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(unique_token(), unique_token());
    }

    #[test]
    fn failure_messages() {
        let secrets = Secrets::new();
        let hs = BecomeHandshake {
            user: "root".into(),
            prompt: "[P]".into(),
            ok: "OK".into(),
            password: None,
        };
        let e = failure(
            &hs,
            b"sudo: a password is required\n",
            Some(1),
            "h",
            &secrets,
        );
        assert!(e.to_string().contains("needs a password"), "{e}");
        let hs = BecomeHandshake {
            password: Some("pw".into()),
            ..hs
        };
        let e = failure(&hs, b"[P]\nSorry, try again.\n[P]", None, "h", &secrets);
        assert!(e.to_string().contains("incorrect sudo password"), "{e}");
    }
}
