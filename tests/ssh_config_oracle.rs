//! ferry's ssh config resolver against OpenSSH's own: each file of the table is resolved
//! by ferry and by `ssh -G -F file [-l user] [-p port] host` (OpenSSH at /usr/bin/ssh),
//! and the keywords ferry uses must read the same.
//!
//! Both sides take the local user and home from the passwd entry (root: /root). Relative
//! `Include`s resolve under ~/.ssh, which this test creates if missing (mode 0700, as ssh
//! would); nothing is written inside it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Keywords compared (identityfile only when the config sets one: ssh -G lists its
/// built-in defaults, which ferry does not try).
const KEYS: &[&str] = &[
    "hostname",
    "port",
    "user",
    "identityfile",
    "identitiesonly",
    "userknownhostsfile",
    "globalknownhostsfile",
    "stricthostkeychecking",
    "proxyjump",
    "proxycommand",
    "hashknownhosts",
    "serveraliveinterval",
    "serveralivecountmax",
    "connecttimeout",
];

struct Case {
    name: &'static str,
    /// `$DIR` is replaced by a temporary directory, `$UP` by the `../..` that climbs from
    /// ~/.ssh to `/`.
    config: &'static str,
    /// Extra files under `$DIR`: (relative path, contents).
    files: &'static [(&'static str, &'static str)],
    host: &'static str,
    user: Option<&'static str>,
    port: Option<u16>,
}

const CASES: &[Case] = &[
    Case {
        name: "key forms, quotes, comments",
        config: "Host alias other\n  HostName=10.0.0.5\n  Port = 2202 # the port\n\
                 \tUser\tdeploy\n  IdentityFile \"$DIR/with space/key\"\n\
                 IdentityFile '$DIR/single'   # trailing\n  ConnectTimeout=7\n\
                 Host *\n  User nobody\n  Port 9\n",
        files: &[],
        host: "alias",
        user: None,
        port: None,
    },
    Case {
        name: "options before any Host apply to all; first value wins",
        config: "User early\nServerAliveInterval 5\nHost alias\n  User late\n  ServerAliveInterval 9\n  ServerAliveCountMax 7\nHost *\n  ServerAliveCountMax 1\n",
        files: &[],
        host: "alias",
        user: None,
        port: None,
    },
    Case {
        name: "Include with a glob, nested Host blocks",
        config: "Include $DIR/conf.d/*.conf\nHost *\n  Port 2000\n",
        files: &[
            ("conf.d/10-a.conf", "Host alias\n  HostName a.example\n"),
            ("conf.d/20-b.conf", "Host *\n  User bee\n  Port 1234\n"),
            ("conf.d/skip.txt", "Host *\n  User never\n"),
        ],
        host: "alias",
        user: None,
        port: None,
    },
    Case {
        name: "Include relative to ~/.ssh, inside an inactive block",
        config: "Host nomatch\n  Include $UP$DIR/rel.conf\nHost alias\n  Include $UP$DIR/rel.conf\n",
        files: &[("rel.conf", "HostName rel.example\nPort 3333\n")],
        host: "alias",
        user: None,
        port: None,
    },
    Case {
        name: "Host patterns: wildcards, ? and negation",
        config: "Host web?? !web13\n  Port 1\nHost *.example !bad.example\n  User ex\nHost web1*\n  HostName fallback\n",
        files: &[],
        host: "web13",
        user: None,
        port: None,
    },
    Case {
        name: "Host patterns: the non-negated case",
        config: "Host web?? !web13\n  Port 1\nHost *.example !bad.example\n  User ex\n",
        files: &[],
        host: "web12",
        user: None,
        port: None,
    },
    Case {
        name: "Match host (HostName so far), originalhost, user, localuser, all",
        config: "Host alias\n  HostName real.example\n\
                 Match host real.example originalhost alias\n  Port 4000\n\
                 Match user admin\n  IdentityFile ~/.ssh/admin_%r\n\
                 Match localuser root,!nobody\n  ServerAliveInterval 11\n\
                 Match all\n  User admin\n  HashKnownHosts yes\n",
        files: &[],
        host: "alias",
        user: Some("admin"),
        port: None,
    },
    Case {
        name: "Match negated criteria and exec with tokens",
        config: "Match !host alias\n  Port 1\n\
                 Match exec \"test %h = alias && test %p = 2200 && test %r = bob\"\n  HostName exec-ok\n\
                 Match exec false\n  User never\n\
                 Match !exec false host alias\n  StrictHostKeyChecking accept-new\n",
        files: &[],
        host: "alias",
        user: Some("bob"),
        port: Some(2200),
    },
    Case {
        name: "Match final: a second pass with the final host name",
        config: "Host alias\n  HostName final.example\n\
                 Match final host final.example\n  User finaluser\n\
                 Host final.example\n  Port 5555\n\
                 Match canonical\n  IdentityFile /canonical\n",
        files: &[],
        host: "alias",
        user: None,
        port: None,
    },
    Case {
        name: "IdentityFile accumulates (no duplicates); tokens in UserKnownHostsFile",
        config: "Host alias\n  HostName %h.example\n  IdentityFile ~/.ssh/id_%h_%r_%p\n\
                 IdentityFile /k/%n-%u-%d\n  UserKnownHostsFile ~/kh/%h-%p-%r /kh/%n_%u %d/x\n\
                 Host *\n  IdentityFile /k/%n-%u-%d\n  IdentityFile /k/all\n\
                 GlobalKnownHostsFile /etc/one /etc/two\n",
        files: &[],
        host: "alias",
        user: Some("carol"),
        port: Some(2022),
    },
    Case {
        name: "ProxyCommand with tokens, before ProxyJump",
        config: "Host alias\n  ProxyCommand nc %h %p\n  ProxyJump j@bastion:22\nHost *\n  ProxyCommand other\n",
        files: &[],
        host: "alias",
        user: None,
        port: None,
    },
    Case {
        name: "ProxyJump before ProxyCommand",
        config: "Host alias\n  ProxyJump j@bastion:2222,second\nHost *\n  ProxyCommand socat - TCP:%h:%p\n",
        files: &[],
        host: "alias",
        user: None,
        port: None,
    },
    Case {
        name: "StrictHostKeyChecking no, -l and -p win over the file",
        config: "Host alias\n  User fileuser\n  Port 1\n  StrictHostKeyChecking no\n  IdentitiesOnly yes\n",
        files: &[],
        host: "alias",
        user: Some("cli"),
        port: Some(2345),
    },
    Case {
        name: "StrictHostKeyChecking yes, case of keywords",
        config: "HOST alias\n  stricthostkeychecking YES\n  hashknownhosts no\n  CONNECTTIMEOUT none\n",
        files: &[],
        host: "alias",
        user: None,
        port: None,
    },
    Case {
        name: "unknown keywords are ignored",
        config: "Host alias\n  SendEnv LANG\n  ForwardAgent yes\n  HostName h.example\n",
        files: &[],
        host: "alias",
        user: None,
        port: None,
    },
];

/// `key value` lines of interest, values of a repeated key collected in order.
fn collect(lines: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in lines {
        if KEYS.contains(&k.as_str()) {
            out.entry(k).or_default().push(v);
        }
    }
    out
}

fn openssh(config: &Path, case: &Case) -> BTreeMap<String, Vec<String>> {
    let mut cmd = Command::new("/usr/bin/ssh");
    cmd.arg("-G").arg("-F").arg(config);
    if let Some(u) = case.user {
        cmd.args(["-l", u]);
    }
    if let Some(p) = case.port {
        cmd.args(["-p", &p.to_string()]);
    }
    cmd.arg(case.host);
    let out = cmd.output().expect("run ssh -G");
    assert!(
        out.status.success(),
        "{}: ssh -G failed: {}",
        case.name,
        String::from_utf8_lossy(&out.stderr)
    );
    collect(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            }),
    )
}

#[test]
fn ferry_resolves_ssh_config_as_ssh_g_does() {
    assert!(
        Path::new("/usr/bin/ssh").exists(),
        "this test compares with OpenSSH's ssh -G: install openssh-client"
    );
    let home = passwd_home();
    let dot_ssh = Path::new(&home).join(".ssh");
    if !dot_ssh.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dot_ssh)
            .unwrap();
    }
    let up = "../".repeat(dot_ssh.components().count() - 1);
    let up = up.trim_end_matches('/');
    let mut failures = Vec::new();
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let subst = |s: &str| s.replace("$UP", up).replace("$DIR", &d);
        for (rel, text) in case.files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, subst(text)).unwrap();
        }
        let config = dir.path().join("config");
        std::fs::write(&config, subst(case.config)).unwrap();

        let want = openssh(&config, case);
        let ferry = ferry::transport::ssh::testing::ssh_g(&config, case.host, case.user, case.port)
            .unwrap_or_else(|e| panic!("{}: ferry failed: {e}", case.name));
        let mut got = collect(ferry);
        let mut want = want;
        if !got.contains_key("identityfile") {
            want.remove("identityfile");
        }
        if std::env::var("ORACLE_SHOW").is_ok() {
            eprintln!("{}: {got:?}", case.name);
        }
        if got != want {
            failures.push(format!(
                "{}\n  config:\n{}\n  ssh -G: {want:#?}\n  ferry:  {got:#?}",
                case.name,
                subst(case.config)
            ));
        }
        got.clear();
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from ssh -G:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}

/// The home of the passwd entry of our uid (what ssh -G uses).
fn passwd_home() -> String {
    let out = Command::new("sh")
        .args(["-c", "getent passwd $(id -u) | cut -d: -f6"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
