//! Exit codes, as `ansible-playbook` has them, so wrappers written for Ansible read
//! ferry's the same way:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every host ok |
//! | 1 | an error that is none of the below (the journal is locked or another playbook's, `--events` cannot be written) |
//! | 2 | a task failed on a host |
//! | 3 | a host was unreachable (and none failed) |
//! | 4 | the inventory, playbook or a template does not parse or check: nothing was contacted |
//! | 5 | bad or incomplete options (an unknown flag, a `--limit` or `--tags` that matches nothing) |
//! | 99 | interrupted (SIGINT, SIGTERM) |
//! | 250 | an unexpected error (a bug in ferry: please report it) |

use crate::report::PlayReport;

pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_HOST_FAILED: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;
pub const EXIT_PARSE_ERROR: u8 = 4;
pub const EXIT_BAD_OPTIONS: u8 = 5;
pub const EXIT_INTERRUPTED: u8 = 99;
pub const EXIT_UNEXPECTED: u8 = 250;

/// The exit code of a finished run: a failed task outranks an unreachable host (as in
/// Ansible), and a journal that could not be written is an error of its own.
pub fn of_report(report: &PlayReport) -> u8 {
    if report.interrupted {
        EXIT_INTERRUPTED
    } else if report.hosts.values().any(|h| h.failed > 0) {
        EXIT_HOST_FAILED
    } else if report.hosts.values().any(|h| h.unreachable) {
        EXIT_UNREACHABLE
    } else if report.journal_error.is_some() {
        EXIT_ERROR
    } else {
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::HostSummary;

    fn report(hosts: &[(&str, u32, bool)]) -> PlayReport {
        let mut r = PlayReport::default();
        for (name, failed, unreachable) in hosts {
            r.hosts.insert(
                name.to_string(),
                HostSummary {
                    failed: *failed,
                    unreachable: *unreachable,
                    ..Default::default()
                },
            );
        }
        r
    }

    #[test]
    fn failed_outranks_unreachable_which_outranks_ok() {
        assert_eq!(of_report(&report(&[("a", 0, false)])), EXIT_OK);
        assert_eq!(
            of_report(&report(&[("a", 0, true), ("b", 0, false)])),
            EXIT_UNREACHABLE
        );
        assert_eq!(
            of_report(&report(&[("a", 0, true), ("b", 1, false)])),
            EXIT_HOST_FAILED
        );
        let mut r = report(&[("a", 0, false)]);
        r.journal_error = Some("disk full".into());
        assert_eq!(of_report(&r), EXIT_ERROR);
        r.interrupted = true;
        assert_eq!(of_report(&r), EXIT_INTERRUPTED);
    }
}
