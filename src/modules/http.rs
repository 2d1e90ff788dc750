//! `http`: an HTTP request and checks of its answer (Ansible's `uri`), from the laptop or
//! through the task's host (an SSH tunnel to an address that host can reach).
//!
//! ```toml
//! [task.http]
//! url = "http://127.0.0.1:8080/packages.json"
//! via = "host"                   # "laptop" (default) | "host": through the host's SSH
//! method = "GET"                 # GET (default) | HEAD | POST | PUT | PATCH | DELETE
//! headers = { Accept = "application/json" }
//! user = "token"                 # basic auth; password from a secret var: never shown
//! password = "{{ packagist_token }}"
//! status = [200]                 # the statuses that pass (default [200])
//! contains = "metadata-url"      # the body contains this text
//! sha256 = "…"                   # the body's sha256 (a download)
//! json = [{ path = "/metadata-url", equals = "/p2/%package%.json" },
//!         { path = "/packages", exists = true }]
//! timeout = "30s"                # per request (default 30 s)
//! retries = 5                    # until the checks pass (default 0), with backoff …
//! delay = "5s"                   # … up to this pause between tries (default 2 s)
//! ca_cert = "files/ca.pem"       # a laptop file, relative to the playbook
//! validate_certs = true
//! ```
//!
//! GET and HEAD only read: the request is sent while facts are read (in `--check` too),
//! and the answer is the task's facts (`register` sees `facts.status`, `facts.body`,
//! `facts.json`, `facts.sha256`); a check that fails fails the task, naming what
//! differed. Other methods change something: they are the task's change, sent only
//! when applied, never in check mode. Requests go through reqwest (rustls); through a
//! host, a local port forwards each connection over the host's SSH connection, and the
//! URL's host name still resolves to it, so TLS checks the name in the URL.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::BackoffBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::module::units::Seconds;
use crate::module::{
    Applied, ArgCheck, ArgError, Change, HostReader, Module, ModuleError, Probe, TaskCtx,
};
use crate::playbook::template::Template;

/// Bytes of the body kept for `contains`, `json` and `register` (all are hashed).
const BODY_LIMIT: usize = 4 << 20;
/// Bytes of the body shown in `register`'s `facts.body` and in messages.
const SHOWN_LIMIT: usize = 64 << 10;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    fn reads_only(self) -> bool {
        matches!(self, Method::Get | Method::Head)
    }
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    #[default]
    Laptop,
    Host,
}

/// A check of the JSON body at a JSON Pointer (RFC 6901: `/packages/acme~1lib` is the
/// key `acme/lib` of `packages`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonCheck {
    pub path: String,
    /// The value there (a string is a template).
    pub equals: Option<Value>,
    /// Whether something is there.
    pub exists: Option<bool>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub url: Template,
    #[serde(default)]
    pub via: Via,
    #[serde(default)]
    pub method: Method,
    #[serde(default)]
    pub headers: BTreeMap<String, Template>,
    pub body: Option<Template>,
    pub user: Option<Template>,
    pub password: Option<Template>,
    pub status: Option<Vec<u16>>,
    pub contains: Option<Template>,
    pub sha256: Option<Template>,
    #[serde(default)]
    pub json: Vec<JsonCheck>,
    pub timeout: Option<Seconds>,
    #[serde(default)]
    pub retries: u32,
    pub delay: Option<Seconds>,
    pub ca_cert: Option<Template>,
    #[serde(default = "yes")]
    pub validate_certs: bool,
}

/// The request, rendered for one host (secrets in it are masked wherever it is shown).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub method: Method,
    /// Masked, for messages and the report.
    pub shown_url: String,
    #[serde(skip)]
    url: String,
    #[serde(skip)]
    headers: Vec<(String, String)>,
    #[serde(skip)]
    body: Option<String>,
    #[serde(skip)]
    auth: Option<(String, String)>,
    pub via: Via,
    /// What the answer must be.
    pub expect: Expect,
}

/// The checks of an answer, rendered.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Expect {
    pub status: Vec<u16>,
    pub contains: Option<String>,
    pub sha256: Option<String>,
    pub json: Vec<JsonCheck>,
}

/// An answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Answer {
    pub status: u16,
    /// Response headers, names lower case (masked).
    pub headers: BTreeMap<String, String>,
    /// The body's first 64 KiB as text (masked).
    pub body: String,
    pub bytes: u64,
    pub sha256: String,
    /// The body as JSON, when it is JSON (and at most 4 MiB).
    pub json: Option<Value>,
    #[serde(skip)]
    text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpFacts {
    pub request: Request,
    /// The last answer (GET and HEAD; none for a request that changes something: it is
    /// sent when applied). Flattened: `register` sees `facts.status`, `facts.body`,
    /// `facts.json`, `facts.sha256`.
    #[serde(flatten)]
    pub answer: Option<Answer>,
    /// Why the last answer does not pass its checks.
    pub failed: Option<String>,
    pub tries: u32,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpChange {
    pub request: Request,
}

impl Change for HttpChange {
    fn describe(&self) -> String {
        format!(
            "{} {}",
            self.request.method.as_str(),
            self.request.shown_url
        )
    }
}

/// Pure: why `answer` does not pass `expect` (`None`: it passes).
pub fn verdict(expect: &Expect, answer: &Answer) -> Option<String> {
    if !expect.status.contains(&answer.status) {
        let list: Vec<String> = expect.status.iter().map(u16::to_string).collect();
        return Some(format!(
            "status {} (expected {}){}",
            answer.status,
            list.join(" or "),
            excerpt(&answer.body)
        ));
    }
    if let Some(text) = &expect.contains {
        if !answer.text.contains(text.as_str()) {
            return Some(format!(
                "the body does not contain {text:?}{}",
                excerpt(&answer.body)
            ));
        }
    }
    if let Some(sha) = &expect.sha256 {
        if !answer.sha256.eq_ignore_ascii_case(sha) {
            return Some(format!(
                "the body ({} bytes) has sha256 {}, not {sha}",
                answer.bytes, answer.sha256
            ));
        }
    }
    for check in &expect.json {
        let Some(doc) = &answer.json else {
            return Some(format!("the body is not JSON{}", excerpt(&answer.body)));
        };
        let found = doc.pointer(&check.path);
        if let Some(want) = check.exists {
            if found.is_some() != want {
                return Some(if want {
                    format!("nothing at {} in the JSON body", check.path)
                } else {
                    format!("{} is in the JSON body", check.path)
                });
            }
        }
        if let Some(want) = &check.equals {
            if found != Some(want) {
                return Some(format!(
                    "{} is {}, expected {}",
                    check.path,
                    found.map_or("missing".to_string(), shorten),
                    shorten(want)
                ));
            }
        }
    }
    None
}

fn shorten(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 300 {
        format!("{}… ({} bytes)", head(&text, 300), text.len())
    } else {
        text
    }
}

/// The longest start of `text` of at most `max` bytes that ends on a character.
fn head(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn excerpt(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return String::new();
    }
    let cut = head(body, 200);
    format!(
        "; body: {cut}{}",
        if cut.len() < body.len() { "…" } else { "" }
    )
}

impl Http {
    fn render_request(&self, reader: &HostReader) -> Result<Request, ModuleError> {
        let render = |t: &Template| reader.render(t);
        let url = render(&self.url)?;
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| Ok((k.clone(), render(v)?)))
            .collect::<Result<Vec<_>, ModuleError>>()?;
        let auth = match &self.user {
            Some(user) => Some((
                render(user)?,
                self.password
                    .as_ref()
                    .map(render)
                    .transpose()?
                    .unwrap_or_default(),
            )),
            None => None,
        };
        let mut json = self.json.clone();
        for check in &mut json {
            if let Some(Value::String(s)) = &check.equals {
                check.equals = Some(Value::String(render(&Template::new(s.clone()))?));
            }
        }
        Ok(Request {
            method: self.method,
            shown_url: reader.secrets.mask(&url),
            url,
            headers,
            body: self.body.as_ref().map(render).transpose()?,
            auth,
            via: self.via,
            expect: Expect {
                status: self.status.clone().unwrap_or_else(|| vec![200]),
                contains: self.contains.as_ref().map(render).transpose()?,
                sha256: self.sha256.as_ref().map(render).transpose()?,
                json,
            },
        })
    }

    fn timeout(&self) -> Duration {
        self.timeout.map_or(DEFAULT_TIMEOUT, Seconds::duration)
    }

    /// Send `request` until its answer passes (or the tries run out): the last answer,
    /// why it fails (if it does), and the number of tries. A request that never got an
    /// answer is an error.
    async fn send_until_passing(
        &self,
        reader: &HostReader,
        request: &Request,
    ) -> Result<(Answer, Option<String>, u32), ModuleError> {
        let delay = self.delay.map_or(DEFAULT_DELAY, Seconds::duration);
        let mut pauses = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200).min(delay))
            .with_max_delay(delay)
            .with_jitter()
            .without_max_times()
            .build();
        // The route and its client, made again only while they cannot be made.
        let mut conn = self.connect(reader, request).await;
        let mut tries = 0;
        loop {
            tries += 1;
            let sent = match &conn {
                Ok((route, client)) => self.send(reader, route, client, request).await,
                Err(e) => Err(e.clone()),
            };
            let last = tries > self.retries;
            match sent {
                Ok(answer) => {
                    let failed = verdict(&request.expect, &answer);
                    if failed.is_none() || last {
                        return Ok((answer, failed, tries));
                    }
                    crate::report::status::set(&format!(
                        "{} {}: {} (try {tries} of {})",
                        request.method.as_str(),
                        request.shown_url,
                        failed.as_deref().unwrap_or(""),
                        self.retries + 1
                    ));
                }
                Err(why) if last => {
                    return Err(ModuleError::Remote {
                        what: format!(
                            "{} {} (from {}, {tries} tries)",
                            request.method.as_str(),
                            request.shown_url,
                            route_name(request.via, &reader.host)
                        ),
                        detail: reader.secrets.mask(&why),
                    })
                }
                Err(_) => {}
            }
            tokio::time::sleep(pauses.next().unwrap_or(delay)).await;
            if conn.is_err() {
                conn = self.connect(reader, request).await;
            }
        }
    }

    async fn connect(
        &self,
        reader: &HostReader,
        request: &Request,
    ) -> Result<(Route, reqwest::Client), String> {
        let route = Route::new(reader, request).await?;
        let client = self.client(reader, &route).await?;
        Ok((route, client))
    }

    async fn send(
        &self,
        reader: &HostReader,
        route: &Route,
        client: &reqwest::Client,
        request: &Request,
    ) -> Result<Answer, String> {
        let method = reqwest::Method::from_bytes(request.method.as_str().as_bytes())
            .map_err(|e| e.to_string())?;
        let mut builder = client.request(method, route.url.as_str());
        if let Some(host) = &route.host_header {
            builder = builder.header(reqwest::header::HOST, host);
        }
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some((user, password)) = &request.auth {
            builder = builder.basic_auth(user, Some(password));
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let mut response = builder.send().await.map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    reader.secrets.mask(&String::from_utf8_lossy(v.as_bytes())),
                )
            })
            .collect();
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        let mut bytes = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            let room = BODY_LIMIT.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        let complete = bytes as usize == kept.len();
        let text = String::from_utf8_lossy(&kept).into_owned();
        let json = complete
            .then(|| serde_json::from_slice::<Value>(&kept).ok())
            .flatten();
        let shown = head(&text, SHOWN_LIMIT);
        Ok(Answer {
            status,
            headers,
            body: reader.secrets.mask(shown),
            bytes,
            sha256: hex::encode(hasher.finalize()),
            json,
            text,
        })
    }

    async fn client(&self, reader: &HostReader, route: &Route) -> Result<reqwest::Client, String> {
        crate::install_tls_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout())
            .danger_accept_invalid_certs(!self.validate_certs);
        if let Some(ca) = &self.ca_cert {
            let path = reader
                .base_dir
                .join(reader.render(ca).map_err(|e| e.to_string())?);
            let pem = tokio::fs::read(&path)
                .await
                .map_err(|e| format!("ca_cert {}: {e}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("ca_cert {}: {e}", path.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some((name, addr)) = &route.resolve {
            builder = builder.resolve(name, *addr);
        }
        builder.build().map_err(|e| error_chain(&e))
    }
}

fn route_name(via: Via, host: &str) -> String {
    match via {
        Via::Laptop => "the laptop".into(),
        Via::Host => format!("host {host}, through its SSH connection"),
    }
}

/// The error and its causes on one line (reqwest's own text is only the outermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Where requests go: the URL itself, or (through the host) a local port forwarding to
/// the URL's host and port as the host sees them.
struct Route {
    url: String,
    /// The URL's host name resolved to the tunnel's local end (TLS still checks it).
    resolve: Option<(String, std::net::SocketAddr)>,
    /// For an IP address in the URL: the URL points at the local end, this is its Host.
    host_header: Option<String>,
    tunnel: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Route {
    fn drop(&mut self) {
        if let Some(t) = self.tunnel.take() {
            t.abort();
        }
    }
}

impl Route {
    async fn new(reader: &HostReader, request: &Request) -> Result<Route, String> {
        if request.via == Via::Laptop {
            return Ok(Route {
                url: request.url.clone(),
                resolve: None,
                host_header: None,
                tunnel: None,
            });
        }
        let mut url = reqwest::Url::parse(&request.url).map_err(|e| e.to_string())?;
        let host = url.host_str().ok_or("the URL has no host")?.to_string();
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        let (local, tunnel) = crate::transport::tunnel::local_forward(
            reader.transport.clone(),
            host.clone(),
            port,
            "http",
        )
        .await
        .map_err(|e| format!("no tunnel through {} to {host}:{port}: {e}", reader.host))?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], local));
        let ip = host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok();
        if !ip {
            return Ok(Route {
                url: request.url.clone(),
                resolve: Some((host, addr)),
                host_header: None,
                tunnel: Some(tunnel),
            });
        }
        if url.scheme() == "https" {
            return Err(format!(
                "https to an IP address ({host}) through a host: write the URL with the \
                 name its certificate has"
            ));
        }
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        url.set_ip_host(addr.ip())
            .map_err(|_| "cannot point the URL at the tunnel")?;
        url.set_port(Some(local))
            .map_err(|_| "cannot point the URL at the tunnel")?;
        Ok(Route {
            url: url.to_string(),
            resolve: None,
            host_header: Some(authority),
            tunnel: Some(tunnel),
        })
    }
}

#[async_trait]
impl Module for Http {
    type Facts = HttpFacts;
    type Change = HttpChange;

    const TEXT_FIELDS: &'static [&'static str] = &[
        "url", "body", "user", "password", "contains", "sha256", "ca_cert",
    ];

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        let url = at.render(&self.url)?;
        match reqwest::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            Ok(u) => {
                return Err(ArgError::template(
                    &self.url,
                    format!("url: an http or https URL with a host, not {}:", u.scheme()),
                ))
            }
            Err(e) => return Err(ArgError::template(&self.url, format!("url: {e}"))),
        }
        if self.password.is_some() && self.user.is_none() {
            return Err(ArgError::field("password", "password goes with user"));
        }
        if self.body.is_some() && self.method.reads_only() {
            return Err(ArgError::field("body", "a GET or HEAD request has no body"));
        }
        if self.status.as_ref().is_some_and(Vec::is_empty) {
            return Err(ArgError::field("status", "give at least one status"));
        }
        for check in &self.json {
            if !check.path.is_empty() && !check.path.starts_with('/') {
                return Err(ArgError::field(
                    "json",
                    format!(
                        "json path {:?}: a JSON Pointer, starting with / (e.g. \"/packages\")",
                        check.path
                    ),
                ));
            }
            if check.equals.is_none() && check.exists.is_none() {
                return Err(ArgError::field(
                    "json",
                    format!("json path {:?}: give equals or exists", check.path),
                ));
            }
        }
        if self.timeout == Some(Seconds(0)) {
            return Err(ArgError::field(
                "timeout",
                "timeout needs at least 1 second",
            ));
        }
        Ok(())
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<HttpFacts, ModuleError> {
        let request = self.render_request(probe)?;
        let start = Instant::now();
        if !request.method.reads_only() {
            return Ok(HttpFacts {
                request,
                answer: None,
                failed: None,
                tries: 0,
                elapsed_ms: 0,
            });
        }
        let (answer, failed, tries) = self.send_until_passing(probe, &request).await?;
        Ok(HttpFacts {
            request,
            answer: Some(answer),
            failed,
            tries,
            elapsed_ms: start.elapsed().as_millis() as u64,
        })
    }

    fn decide(&self, facts: &HttpFacts) -> Result<Vec<HttpChange>, ModuleError> {
        decide(facts)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &HttpFacts,
        changes: &[HttpChange],
    ) -> Result<Applied, ModuleError> {
        let mut applied = Applied::changed();
        for change in changes {
            let request = &change.request;
            let (answer, failed, tries) = self.send_until_passing(ctx, request).await?;
            if let Some(why) = failed {
                return Err(failed_check(request, &why, tries));
            }
            applied.output = Some(crate::report::CommandOutput {
                rc: Some(0),
                stdout: answer.body,
                stderr: String::new(),
            });
        }
        Ok(applied)
    }
}

fn failed_check(request: &Request, why: &str, tries: u32) -> ModuleError {
    ModuleError::Remote {
        what: format!(
            "{} {}{}",
            request.method.as_str(),
            request.shown_url,
            if tries > 1 {
                format!(" ({tries} tries)")
            } else {
                String::new()
            }
        ),
        detail: why.to_string(),
    }
}

/// Pure: a read whose answer failed its checks fails the task; a request that changes
/// something is the change.
pub fn decide(facts: &HttpFacts) -> Result<Vec<HttpChange>, ModuleError> {
    if !facts.request.method.reads_only() {
        return Ok(vec![HttpChange {
            request: facts.request.clone(),
        }]);
    }
    match &facts.failed {
        Some(why) => Err(failed_check(&facts.request, why, facts.tries)),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: BTreeMap::new(),
            body: body.into(),
            bytes: body.len() as u64,
            sha256: hex::encode(Sha256::digest(body.as_bytes())),
            json: serde_json::from_str(body).ok(),
            text: body.into(),
        }
    }

    fn expect(json: Vec<JsonCheck>) -> Expect {
        Expect {
            status: vec![200],
            json,
            ..Default::default()
        }
    }

    fn check(path: &str, equals: Option<Value>, exists: Option<bool>) -> JsonCheck {
        JsonCheck {
            path: path.into(),
            equals,
            exists,
        }
    }

    #[test]
    fn status_contains_and_sha256_are_checked() {
        let a = answer(200, "{\"ok\": true}");
        assert_eq!(verdict(&expect(vec![]), &a), None);
        let e = verdict(&expect(vec![]), &answer(503, "down for maintenance")).unwrap();
        assert_eq!(e, "status 503 (expected 200); body: down for maintenance");
        let mut x = expect(vec![]);
        x.contains = Some("metadata-url".into());
        assert!(verdict(&x, &a)
            .unwrap()
            .contains("does not contain \"metadata-url\""));
        let mut x = expect(vec![]);
        x.sha256 = Some(a.sha256.to_uppercase());
        assert_eq!(verdict(&x, &a), None);
        x.sha256 = Some("00".into());
        assert!(verdict(&x, &a).unwrap().contains("has sha256"));
    }

    #[test]
    fn json_pointers_are_checked_for_values_and_presence() {
        let a = answer(
            200,
            r#"{"metadata-url": "/p2/%package%.json", "packages": {"acme/lib": []}}"#,
        );
        let ok = vec![
            check(
                "/metadata-url",
                Some(Value::from("/p2/%package%.json")),
                None,
            ),
            check("/packages/acme~1lib", None, Some(true)),
            check("/providers", None, Some(false)),
        ];
        assert_eq!(verdict(&expect(ok), &a), None);
        let e = verdict(
            &expect(vec![check(
                "/metadata-url",
                Some(Value::from("/p/x")),
                None,
            )]),
            &a,
        )
        .unwrap();
        assert_eq!(
            e,
            "/metadata-url is \"/p2/%package%.json\", expected \"/p/x\""
        );
        let e = verdict(&expect(vec![check("/nope", None, Some(true))]), &a).unwrap();
        assert_eq!(e, "nothing at /nope in the JSON body");
        let e = verdict(
            &expect(vec![check("/x", None, Some(true))]),
            &answer(200, "<html>"),
        )
        .unwrap();
        assert!(e.starts_with("the body is not JSON"), "{e}");
    }

    #[test]
    fn a_read_that_fails_its_checks_fails_and_a_write_is_the_change() {
        let request = |method| Request {
            method,
            shown_url: "http://x/".into(),
            url: "http://x/".into(),
            headers: Vec::new(),
            body: None,
            auth: None,
            via: Via::Laptop,
            expect: Expect::default(),
        };
        let facts = |method, failed: Option<&str>| HttpFacts {
            request: request(method),
            answer: None,
            failed: failed.map(str::to_string),
            tries: 3,
            elapsed_ms: 0,
        };
        assert!(decide(&facts(Method::Get, None)).unwrap().is_empty());
        let e = decide(&facts(Method::Get, Some("status 500 (expected 200)")))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "GET http://x/ (3 tries): status 500 (expected 200)");
        let c = decide(&facts(Method::Post, None)).unwrap();
        assert_eq!(c[0].describe(), "POST http://x/");
    }
}
