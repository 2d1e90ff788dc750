//! User authentication in the order OpenSSH tries it: public keys (agent first, then key
//! files), then keyboard-interactive / password. Passphrases and passwords come from the
//! inventory, else from a terminal prompt when allowed; whatever is obtained is cached for
//! the other connections to the same host and registered as a secret.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{Handle, Handler, KeyboardInteractiveAuthResponse};
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{MethodKind, MethodSet};

use super::config::Target;
use crate::secrets::Secrets;
use crate::transport::TransportError;

/// Where to find an ssh-agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AgentSource {
    /// `$SSH_AUTH_SOCK`, if set (the default).
    #[default]
    Env,
    /// This socket.
    Socket(PathBuf),
    /// Do not use an agent.
    Disabled,
}

/// Credentials for one host, shared by its connections.
pub(crate) struct Credentials {
    pub agent: AgentSource,
    pub key_passphrase: Mutex<Option<String>>,
    pub password: Mutex<Option<String>>,
    /// Decrypted keys by path, so a passphrase is asked once.
    keys: Mutex<HashMap<PathBuf, Arc<PrivateKey>>>,
    pub allow_prompt: bool,
    pub secrets: Secrets,
}

impl Credentials {
    pub fn new(
        agent: AgentSource,
        key_passphrase: Option<String>,
        password: Option<String>,
        allow_prompt: bool,
        secrets: Secrets,
    ) -> Self {
        Credentials {
            agent,
            key_passphrase: Mutex::new(key_passphrase),
            password: Mutex::new(password),
            keys: Mutex::new(HashMap::new()),
            allow_prompt,
            secrets,
        }
    }

    fn cached_key(&self, path: &Path) -> Option<Arc<PrivateKey>> {
        self.keys.lock().ok().and_then(|k| k.get(path).cloned())
    }

    fn remember_key(&self, path: &Path, key: Arc<PrivateKey>) {
        if let Ok(mut k) = self.keys.lock() {
            k.insert(path.to_path_buf(), key);
        }
    }

    fn passphrase(&self) -> Option<String> {
        self.key_passphrase.lock().ok().and_then(|p| p.clone())
    }

    fn password(&self) -> Option<String> {
        self.password.lock().ok().and_then(|p| p.clone())
    }

    /// Ask on the terminal, only when prompting is allowed and stdin is a terminal.
    async fn prompt(&self, question: String) -> Option<String> {
        if !self.allow_prompt || !std::io::stdin().is_terminal() {
            return None;
        }
        // One prompt at a time, even when several hosts connect at once.
        static PROMPT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _guard = PROMPT_LOCK.lock().await;
        // The live lines stand still while the person types (they would draw over it).
        let answer = tokio::task::spawn_blocking(move || {
            crate::report::suspend_live(|| rpassword::prompt_password(question))
        })
        .await
        .ok()?
        .ok()?;
        self.secrets.add(answer.clone());
        Some(answer)
    }
}

/// What was tried, for the "authentication failed" message.
#[derive(Default)]
struct Tried(Vec<String>);

impl Tried {
    fn push(&mut self, what: impl Into<String>) {
        self.0.push(what.into());
    }
    fn into_string(self) -> String {
        if self.0.is_empty() {
            "nothing: no agent, key file or password available".to_string()
        } else {
            self.0.join(", ")
        }
    }
}

/// Authenticate `handle` as `target.user`. Network steps are bounded by `timeout`;
/// prompts are not.
pub(crate) async fn authenticate<H: Handler>(
    handle: &mut Handle<H>,
    target: &Target,
    creds: &Credentials,
    timeout: Duration,
) -> Result<(), TransportError> {
    let user = target.user.clone();
    let addr = target.addr();
    let net = |e: russh::Error| super::session::map_russh_error(e, &addr);
    let mut tried = Tried::default();

    // "none" tells which methods the server accepts (and lets an open server in).
    let mut methods = match bounded(timeout, &addr, handle.authenticate_none(user.clone()))
        .await?
        .map_err(net)?
    {
        russh::client::AuthResult::Success => return Ok(()),
        russh::client::AuthResult::Failure {
            remaining_methods, ..
        } => remaining_methods,
    };

    let mut offered: Vec<PublicKey> = Vec::new();
    let mut rsa_hash: Option<Option<HashAlg>> = None;

    if allows(&methods, MethodKind::PublicKey) {
        // 1. Agent identities.
        if let Some(mut agent) = connect_agent(&creds.agent).await {
            let identities = agent.request_identities().await.unwrap_or_default();
            for identity in identities {
                let russh::keys::agent::AgentIdentity::PublicKey { key, comment } = identity else {
                    continue;
                };
                let hash = if key.algorithm().is_rsa() {
                    rsa_best_hash(handle, &mut rsa_hash).await
                } else {
                    None
                };
                let label = if comment.is_empty() {
                    format!("agent key {}", key.fingerprint(HashAlg::Sha256))
                } else {
                    format!("agent key {comment}")
                };
                offered.push(key.clone());
                let result = bounded(
                    timeout,
                    &addr,
                    handle.authenticate_publickey_with(user.clone(), key, hash, &mut agent),
                )
                .await?;
                tried.push(label);
                match result {
                    Ok(russh::client::AuthResult::Success) => return Ok(()),
                    Ok(russh::client::AuthResult::Failure {
                        remaining_methods, ..
                    }) => methods = remaining_methods,
                    Err(e) => tracing::debug!("agent could not sign: {e}"),
                }
            }
        }

        // 2. Key files.
        for path in &target.identity_files {
            if !path.exists() {
                continue;
            }
            let key = match load_key(path, creds).await {
                Ok(k) => k,
                Err(why) => {
                    tried.push(format!("{} ({why})", path.display()));
                    continue;
                }
            };
            if offered
                .iter()
                .any(|o| o.key_data() == key.public_key().key_data())
            {
                continue;
            }
            offered.push(key.public_key().clone());
            let hash = if key.algorithm().is_rsa() {
                rsa_best_hash(handle, &mut rsa_hash).await
            } else {
                None
            };
            tried.push(path.display().to_string());
            let result = bounded(
                timeout,
                &addr,
                handle.authenticate_publickey(user.clone(), PrivateKeyWithHashAlg::new(key, hash)),
            )
            .await?
            .map_err(net)?;
            match result {
                russh::client::AuthResult::Success => return Ok(()),
                russh::client::AuthResult::Failure {
                    remaining_methods, ..
                } => methods = remaining_methods,
            }
        }
    }

    // 3. Password, through keyboard-interactive (PAM) or the password method.
    let wants_kbd = allows(&methods, MethodKind::KeyboardInteractive);
    let wants_password = allows(&methods, MethodKind::Password);
    if wants_kbd || wants_password {
        let password = match creds.password() {
            Some(p) => Some(p),
            None => {
                let p = creds
                    .prompt(format!("{}@{}'s password: ", user, target.alias))
                    .await;
                if let (Some(p), Ok(mut slot)) = (&p, creds.password.lock()) {
                    *slot = Some(p.clone());
                }
                p
            }
        };
        if let Some(password) = password {
            if wants_password {
                tried.push("password");
                let result = bounded(
                    timeout,
                    &addr,
                    handle.authenticate_password(user.clone(), password.clone()),
                )
                .await?
                .map_err(net)?;
                if result.success() {
                    return Ok(());
                }
            } else {
                tried.push("keyboard-interactive password");
                if keyboard_interactive(handle, &user, &password, timeout, &addr).await? {
                    return Ok(());
                }
            }
        }
    }

    Err(TransportError::AuthFailed {
        user,
        addr,
        tried: creds.secrets.mask(&tried.into_string()),
    })
}

fn allows(methods: &MethodSet, kind: MethodKind) -> bool {
    methods.contains(&kind)
}

async fn bounded<T>(
    timeout: Duration,
    addr: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, TransportError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| TransportError::Timeout {
            addr: addr.to_string(),
            secs: timeout.as_secs(),
        })
}

/// Answer keyboard-interactive prompts: hidden prompts get the password, echoed ones an
/// empty answer. At most a few rounds, as PAM may ask again on a wrong password.
async fn keyboard_interactive<H: Handler>(
    handle: &mut Handle<H>,
    user: &str,
    password: &str,
    timeout: Duration,
    addr: &str,
) -> Result<bool, TransportError> {
    let net = |e: russh::Error| super::session::map_russh_error(e, addr);
    let mut reply = bounded(
        timeout,
        addr,
        handle.authenticate_keyboard_interactive_start(user.to_string(), None),
    )
    .await?
    .map_err(net)?;
    let mut answered_password = false;
    for _round in 0..4 {
        match reply {
            KeyboardInteractiveAuthResponse::Success => return Ok(true),
            KeyboardInteractiveAuthResponse::Failure { .. } => return Ok(false),
            KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                let hidden = prompts.iter().filter(|p| !p.echo).count();
                if hidden > 0 && answered_password {
                    // Asked for the password again: it was wrong.
                    return Ok(false);
                }
                answered_password |= hidden > 0;
                let answers = prompts
                    .iter()
                    .map(|p| {
                        if p.echo {
                            String::new()
                        } else {
                            password.to_string()
                        }
                    })
                    .collect();
                reply = bounded(
                    timeout,
                    addr,
                    handle.authenticate_keyboard_interactive_respond(answers),
                )
                .await?
                .map_err(net)?;
            }
        }
    }
    Ok(false)
}

async fn rsa_best_hash<H: Handler>(
    handle: &Handle<H>,
    cache: &mut Option<Option<HashAlg>>,
) -> Option<HashAlg> {
    if let Some(h) = cache {
        return *h;
    }
    // Servers that announce no signature algorithms (old OpenSSH) get SHA-256, which
    // every OpenSSH since 7.2 accepts.
    let hash = match handle.best_supported_rsa_hash().await {
        Ok(Some(h)) => h,
        _ => Some(HashAlg::Sha256),
    };
    *cache = Some(hash);
    hash
}

async fn connect_agent(source: &AgentSource) -> Option<AgentClient<tokio::net::UnixStream>> {
    let path = match source {
        AgentSource::Disabled => return None,
        AgentSource::Socket(p) => p.clone(),
        AgentSource::Env => PathBuf::from(std::env::var_os("SSH_AUTH_SOCK")?),
    };
    match AgentClient::connect_uds(&path).await {
        Ok(agent) => Some(agent),
        Err(e) => {
            tracing::debug!("ssh-agent at {} not usable: {e}", path.display());
            None
        }
    }
}

/// Load (and decrypt) a key file, prompting for its passphrase when needed and allowed.
/// The error is a short reason for the "tried" list.
async fn load_key(path: &Path, creds: &Credentials) -> Result<Arc<PrivateKey>, String> {
    if let Some(k) = creds.cached_key(path) {
        return Ok(k);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("unreadable: {e}"))?;
    let first = decode(text.clone(), None).await;
    let key = match first {
        Ok(k) => k,
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let passphrase = match creds.passphrase() {
                Some(p) => p,
                None => {
                    let p = creds
                        .prompt(format!("Enter passphrase for key '{}': ", path.display()))
                        .await
                        .ok_or_else(|| "encrypted, no passphrase given".to_string())?;
                    if let Ok(mut slot) = creds.key_passphrase.lock() {
                        *slot = Some(p.clone());
                    }
                    p
                }
            };
            decode(text, Some(passphrase))
                .await
                .map_err(|_| "could not decrypt: wrong passphrase?".to_string())?
        }
        Err(e) => return Err(format!("unusable: {e}")),
    };
    let key = Arc::new(key);
    creds.remember_key(path, key.clone());
    Ok(key)
}

/// Key derivation (bcrypt-pbkdf) takes a while: keep it off the async workers.
async fn decode(
    text: String,
    passphrase: Option<String>,
) -> Result<PrivateKey, russh::keys::Error> {
    tokio::task::spawn_blocking(move || {
        russh::keys::decode_secret_key(&text, passphrase.as_deref())
    })
    .await
    .unwrap_or(Err(russh::keys::Error::KeyIsCorrupt))
}
