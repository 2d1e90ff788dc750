//! The HTTP side of the API server: discovery, CRUD, list/watch, scale, patch, delete, logs,
//! and the hand-off to exec.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};

use crate::kubelet::Kubelet;
use crate::ops::{self, Config, Deleted};
use crate::resources::{self, ResourceType};
use crate::select::{FieldSelector, LabelSelector};
use crate::store::{is_deleting, merge_patch, ApiError, Store, WatchEvent};
use crate::table;

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub struct Sim {
    pub config: Config,
    pub store: Arc<Store>,
    pub kubelet: Arc<Kubelet>,
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn json_response(code: u16, value: &Value) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.code, &error.to_status())
}

struct Query(HashMap<String, Vec<String>>);

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            map.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        Query(map)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.first()).map(String::as_str)
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0.get(key).cloned().unwrap_or_default()
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1"))
    }
}

/// A parsed resource URL.
struct Target {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let (namespace, rest) = if rest.len() >= 3
        && rest[0] == "namespaces"
        && !matches!(rest[2], "status" | "finalize")
    {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let rt = resources::by_group_version_plural(group, version, rest.first()?)?;
    if namespace.is_some() != rt.namespaced
        && !(rt.namespaced && rest.len() == 1 && namespace.is_none())
    {
        return None;
    }
    Some(Target {
        rt,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=Table"))
}

pub async fn handle(sim: Arc<Sim>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let response = match route(sim, req).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    };
    let status = response.status().as_u16();
    if method == Method::GET && status < 400 {
        tracing::debug!("{method} {uri} -> {status}");
    } else {
        tracing::info!("{method} {uri} -> {status}");
    }
    Ok(response)
}

async fn route(sim: Arc<Sim>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["version"] => Ok(json_response(
            200,
            &json!({
                "major": sim.config.version.0.to_string(),
                "minor": sim.config.version.1.to_string(),
                "gitVersion": format!("v{}.{}.0+k8s-sim", sim.config.version.0, sim.config.version.1),
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
                "platform": "linux/amd64",
            }),
        )),
        ["healthz"] | ["livez"] | ["readyz"] => {
            let mut response = Response::new(full("ok"));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain"),
            );
            Ok(response)
        }
        // Plain application/json answers make clients fall back from aggregated discovery.
        ["api"] => Ok(json_response(
            200,
            &resources::api_versions(&sim.config.listen),
        )),
        ["apis"] => Ok(json_response(200, &resources::api_group_list())),
        ["openapi", "v3"] => Ok(json_response(200, &resources::openapi_v3_root())),
        ["openapi", "v3", rest @ ..] => resources::openapi_v3_group_version(&rest.join("/"))
            .map(|doc| json_response(200, &doc))
            .ok_or_else(|| ApiError::not_found_path(&path)),
        ["api", "v1"] => Ok(json_response(
            200,
            &resources::api_resource_list("", "v1").unwrap_or(Value::Null),
        )),
        ["apis", group] => resources::api_group(group)
            .map(|g| json_response(200, &g))
            .ok_or_else(|| ApiError::not_found_path(&path)),
        ["apis", group, version] => resources::api_resource_list(group, version)
            .map(|l| json_response(200, &l))
            .ok_or_else(|| ApiError::not_found_path(&path)),
        ["api", "v1", rest @ ..] => {
            let target =
                parse_target("", "v1", rest).ok_or_else(|| ApiError::not_found_path(&path))?;
            resource_request(sim, req, target).await
        }
        ["apis", group, version, rest @ ..] => {
            let target = parse_target(group, version, rest)
                .ok_or_else(|| ApiError::not_found_path(&path))?;
            resource_request(sim, req, target).await
        }
        _ => Err(ApiError::not_found_path(&path)),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<(http::HeaderMap, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    // JSON and YAML, and the protobuf kubectl sends for `create configmap|secret`
    // (decoded to JSON here: see protobuf.rs).
    let protobuf = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/vnd.kubernetes.protobuf"));
    let bytes = body
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?
        .to_bytes();
    if protobuf {
        let object = crate::protobuf::decode(&bytes).map_err(ApiError::unsupported_media)?;
        let json = serde_json::to_vec(&object)
            .map_err(|e| ApiError::internal(format!("re-encoding a protobuf body: {e}")))?;
        return Ok((parts.headers, Bytes::from(json)));
    }
    Ok((parts.headers, bytes))
}

fn parse_json_or_yaml(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes).or_else(|json_err| {
        serde_yaml::from_slice(bytes).map_err(|_| {
            ApiError::bad_request(format!("the request body is not valid JSON: {json_err}"))
        })
    })
}

async fn resource_request(
    sim: Arc<Sim>,
    req: Request<Incoming>,
    target: Target,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let ns = target.namespace.clone().unwrap_or_default();
    let rt = target.rt;
    match (&method, target.name.as_deref(), target.sub.as_deref()) {
        (&Method::GET, None, None) => {
            if query.flag("watch") {
                watch(sim, &req, rt, target.namespace.as_deref(), &query)
            } else {
                list(&sim, &req, rt, target.namespace.as_deref(), &query)
            }
        }
        (&Method::GET, Some(name), None | Some("status")) => {
            let obj = sim
                .store
                .get(rt, &ns, name)
                .ok_or_else(|| ApiError::not_found(rt, name))?;
            if wants_table(&req) {
                Ok(json_response(
                    200,
                    &table::table(rt, &[obj], sim.store.current_rv()),
                ))
            } else {
                Ok(json_response(200, &obj))
            }
        }
        (&Method::GET | &Method::POST, Some(name), Some("exec")) if rt.plural == "pods" => {
            crate::exec::handle_exec(
                sim.clone(),
                req,
                &ns,
                name,
                &query.all("command"),
                query.get("container"),
                ExecFlags {
                    stdin: query.flag("stdin"),
                    stdout: query.flag("stdout"),
                    stderr: query.flag("stderr"),
                    tty: query.flag("tty"),
                },
            )
            .await
        }
        (&Method::GET, Some(name), Some("log")) if rt.plural == "pods" => {
            let pod = sim
                .store
                .get(rt, &ns, name)
                .ok_or_else(|| ApiError::not_found(rt, name))?;
            let container = match query.get("container") {
                Some(c) => c.to_string(),
                None => pod["spec"]["containers"][0]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            };
            let log = sim
                .kubelet
                .read_log(&pod, &container)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let mut response = Response::new(full(log));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain"),
            );
            Ok(response)
        }
        (_, Some(name), Some("scale"))
            if matches!(rt.plural, "deployments" | "statefulsets" | "replicasets") =>
        {
            scale(&sim, req, rt, &ns, name).await
        }
        (&Method::POST, None, None) => {
            let (_, body) = read_body(req).await?;
            let obj = parse_json_or_yaml(&body)?;
            let mut obj = sanitize_new(rt, obj);
            if query.get("dryRun").is_some() {
                return Ok(json_response(201, &obj));
            }
            prepare_create(&sim.store, &sim.config.node_name, rt, &mut obj);
            let created = sim.store.create(rt, &ns, obj)?;
            Ok(json_response(201, &created))
        }
        (&Method::PUT, Some(name), sub @ (None | Some("status"))) => {
            let (_, body) = read_body(req).await?;
            let body = parse_json_or_yaml(&body)?;
            if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            let status_only = sub == Some("status");
            let updated = sim.store.update_with(rt, &ns, name, |current| {
                check_resource_version(rt, name, current, &body)?;
                *current = merge_update(rt, current, body.clone(), status_only);
                if rt.plural == "secrets" {
                    fold_string_data(current);
                }
                Ok(())
            })?;
            Ok(json_response(200, &updated))
        }
        (&Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            let (headers, body) = read_body(req).await?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let patch = parse_json_or_yaml(&body)?;
            let status_only = sub == Some("status");
            if content_type.starts_with("application/apply-patch")
                && sim.store.get(rt, &ns, name).is_none()
            {
                let mut obj = sanitize_new(rt, patch);
                obj["metadata"]["name"] = json!(name);
                prepare_create(&sim.store, &sim.config.node_name, rt, &mut obj);
                let created = sim.store.create(rt, &ns, obj)?;
                return Ok(json_response(201, &created));
            }
            let updated = sim.store.update_with(rt, &ns, name, |current| {
                let patched = apply_patch(current, &patch, &content_type)?;
                check_resource_version(rt, name, current, &patched)?;
                *current = merge_update(rt, current, patched, status_only);
                if rt.plural == "secrets" {
                    fold_string_data(current);
                }
                Ok(())
            })?;
            Ok(json_response(200, &updated))
        }
        (&Method::DELETE, Some(name), None) => {
            let (_, body) = read_body(req).await?;
            let options = parse_json_or_yaml(&body).unwrap_or(Value::Null);
            let grace = query
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse::<i64>().ok())
                .or_else(|| options["gracePeriodSeconds"].as_i64());
            let uid = options["preconditions"]["uid"].as_str();
            match ops::delete_object(&sim.store, rt, &ns, name, grace, uid)? {
                Deleted::Pending(obj) => Ok(json_response(200, &obj)),
                Deleted::Gone(status) => Ok(json_response(200, &status)),
            }
        }
        (&Method::DELETE, None, None) => {
            let selector = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
            let (items, _) = sim.store.list(rt, target.namespace.as_deref());
            let mut deleted = Vec::new();
            for item in items.iter().filter(|i| selector.matches(i)) {
                let item_ns = item["metadata"]["namespace"].as_str().unwrap_or("");
                if let Ok(Deleted::Pending(obj)) = ops::delete_object(
                    &sim.store,
                    rt,
                    item_ns,
                    item["metadata"]["name"].as_str().unwrap_or(""),
                    None,
                    None,
                ) {
                    deleted.push(obj);
                } else {
                    deleted.push(item.clone());
                }
            }
            Ok(json_response(
                200,
                &list_body(rt, deleted, sim.store.current_rv()),
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            req.uri().path()
        ))),
    }
}

pub struct ExecFlags {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Drop fields a client may not set on create.
fn sanitize_new(rt: &ResourceType, mut obj: Value) -> Value {
    if let Some(meta) = obj["metadata"].as_object_mut() {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            meta.remove(field);
        }
    }
    if matches!(
        rt.plural,
        "pods" | "deployments" | "statefulsets" | "replicasets" | "persistentvolumeclaims"
    ) {
        if let Some(map) = obj.as_object_mut() {
            map.remove("status");
        }
    }
    obj
}

/// Defaults and admission the real API server applies on create.
pub fn prepare_create(store: &Store, node_name: &str, rt: &ResourceType, obj: &mut Value) {
    match rt.plural {
        "persistentvolumeclaims" => {
            if obj["spec"]["storageClassName"].is_null() {
                if let Some(class) = default_storage_class(store) {
                    obj["spec"]["storageClassName"] = json!(class);
                }
            }
            add_finalizer(obj, "kubernetes.io/pvc-protection");
            if obj["spec"]["volumeMode"].is_null() {
                obj["spec"]["volumeMode"] = json!("Filesystem");
            }
            obj["status"] = json!({"phase": "Pending"});
        }
        "persistentvolumes" => add_finalizer(obj, "kubernetes.io/pv-protection"),
        "pods" => {
            crate::controllers::default_pod(obj, node_name);
        }
        "secrets" => {
            fold_string_data(obj);
            // The API server's defaulting: a Secret without a type is Opaque.
            if obj["type"].as_str().is_none_or(str::is_empty) {
                obj["type"] = json!("Opaque");
            }
        }
        "namespaces" => {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] =
                obj["metadata"]["name"].clone();
        }
        "deployments" => {
            if obj["spec"]["replicas"].is_null() {
                obj["spec"]["replicas"] = json!(1);
            }
            obj["status"] = json!({});
        }
        "statefulsets" | "replicasets" => {
            if obj["spec"]["replicas"].is_null() {
                obj["spec"]["replicas"] = json!(1);
            }
            obj["status"] = json!({"replicas": 0});
        }
        "services" => {
            if obj["spec"]["type"].is_null() {
                obj["spec"]["type"] = json!("ClusterIP");
            }
            if obj["spec"]["clusterIP"].is_null() {
                obj["spec"]["clusterIP"] = json!(format!(
                    "10.43.{}.{}",
                    fastrand::u8(1..255),
                    fastrand::u8(1..255)
                ));
            }
        }
        _ => {}
    }
}

/// As the API server does for Secrets: `stringData` is write-only, merged into `data`
/// (base64) on every write, and never stored or returned.
pub fn fold_string_data(obj: &mut Value) {
    if let Some(plain) = obj.get("stringData").and_then(Value::as_object).cloned() {
        if !obj["data"].is_object() {
            obj["data"] = json!({});
        }
        for (key, value) in plain {
            let text = value.as_str().unwrap_or("").to_string();
            obj["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
    if let Some(map) = obj.as_object_mut() {
        map.remove("stringData");
    }
}

pub fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let finalizers = &mut obj["metadata"]["finalizers"];
    if !finalizers.is_array() {
        *finalizers = json!([]);
    }
    if let Some(list) = finalizers.as_array_mut() {
        if !list.iter().any(|f| f == finalizer) {
            list.push(json!(finalizer));
        }
    }
}

pub fn default_storage_class(store: &Store) -> Option<String> {
    let (classes, _) = store.list(ops::STORAGECLASSES, None);
    classes
        .iter()
        .find(|c| {
            c["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"].as_str()
                == Some("true")
        })
        .and_then(|c| c["metadata"]["name"].as_str().map(String::from))
}

fn check_resource_version(
    rt: &ResourceType,
    name: &str,
    current: &Value,
    incoming: &Value,
) -> Result<(), ApiError> {
    if let Some(wanted) = incoming["metadata"]["resourceVersion"].as_str() {
        if !wanted.is_empty() && Some(wanted) != current["metadata"]["resourceVersion"].as_str() {
            return Err(ApiError::conflict(
                rt,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
    }
    Ok(())
}

/// The object a PUT/PATCH leaves: status changes only through /status, spec and metadata
/// only through the main resource; server-owned metadata is kept.
fn merge_update(
    rt: &ResourceType,
    current: &Value,
    mut incoming: Value,
    status_only: bool,
) -> Value {
    let has_status_sub = rt.subresources.contains(&"status");
    if status_only {
        let mut result = current.clone();
        result["status"] = incoming["status"].take();
        return result;
    }
    if has_status_sub {
        incoming["status"] = current["status"].clone();
    }
    for field in [
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "creationTimestamp",
        "uid",
    ] {
        incoming["metadata"][field] = current["metadata"][field].clone();
    }
    if let Some(meta) = incoming["metadata"].as_object_mut() {
        meta.retain(|_, v| !v.is_null());
    }
    if let Some(map) = incoming.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    incoming
}

fn apply_patch(current: &Value, patch: &Value, content_type: &str) -> Result<Value, ApiError> {
    let mut patched = current.clone();
    if content_type.starts_with("application/json-patch+json") {
        crate::store::json_patch(&mut patched, patch)?;
    } else if content_type.starts_with("application/merge-patch+json")
        || content_type.starts_with("application/strategic-merge-patch+json")
        || content_type.starts_with("application/apply-patch")
    {
        // Strategic merge and server-side apply are approximated by a JSON merge patch.
        merge_patch(&mut patched, patch);
    } else {
        return Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml \
             (got {content_type:?})"
        )));
    }
    Ok(patched)
}

fn scale_of(obj: &Value) -> Value {
    let selector = LabelSelector::from_object(&obj["spec"]["selector"]).to_string_form();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector,
        },
    })
}

async fn scale(
    sim: &Sim,
    req: Request<Incoming>,
    rt: &ResourceType,
    ns: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    let current = sim
        .store
        .get(rt, ns, name)
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if method == Method::GET {
        return Ok(json_response(200, &scale_of(&current)));
    }
    let (headers, body) = read_body(req).await?;
    let body = parse_json_or_yaml(&body)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let updated = sim.store.update_with(rt, ns, name, |obj| {
        let current_scale = scale_of(obj);
        let new_scale = match method {
            Method::PUT => body.clone(),
            Method::PATCH => apply_patch(&current_scale, &body, &content_type)?,
            _ => {
                return Err(ApiError::method_not_allowed(
                    "scale supports get, update and patch",
                ))
            }
        };
        check_resource_version(rt, name, obj, &new_scale)?;
        let replicas = new_scale["spec"]["replicas"].as_i64().unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(
                rt,
                name,
                "spec.replicas: Invalid value: must be greater than or equal to 0",
            ));
        }
        obj["spec"]["replicas"] = json!(replicas);
        Ok(())
    })?;
    Ok(json_response(200, &scale_of(&updated)))
}

fn list_body(rt: &ResourceType, items: Vec<Value>, rv: u64) -> Value {
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut item| {
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    json!({
        "kind": rt.list_kind(),
        "apiVersion": rt.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

fn selectors(query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    Ok((
        LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
        FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?,
    ))
}

fn list(
    sim: &Sim,
    req: &Request<Incoming>,
    rt: &ResourceType,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(query)?;
    let (items, rv) = sim.store.list(rt, namespace);
    let items: Vec<Value> = items
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .collect();
    if wants_table(req) {
        return Ok(json_response(200, &table::table(rt, &items, rv)));
    }
    Ok(json_response(200, &list_body(rt, items, rv)))
}

fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn watch(
    sim: Arc<Sim>,
    req: &Request<Incoming>,
    rt: &'static ResourceType,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(query)?;
    let as_table = wants_table(req);
    let since = match query.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let send_initial = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let subscription =
        match sim
            .store
            .subscribe(if send_initial { None } else { since }, rt, namespace)
        {
            Ok(s) => s,
            Err(error) => {
                // As the real server does: an ERROR event inside a 200 watch stream.
                let body = event_line("ERROR", &error.to_status());
                let mut response = Response::new(full(body));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                return Ok(response);
            }
        };
    let key = rt.key();
    let namespace = namespace.map(String::from);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let format = move |event_type: &str, object: &Value| -> Bytes {
        if as_table && event_type != "BOOKMARK" && event_type != "ERROR" {
            event_line(
                event_type,
                &table::table(rt, std::slice::from_ref(object), 0),
            )
        } else {
            event_line(event_type, object)
        }
    };
    let matches = move |o: &Value| labels.matches(o) && fields.matches(o);
    tokio::spawn(async move {
        let mut receiver = subscription.receiver;
        let mut last_rv = subscription.rv;
        for object in subscription.snapshot.iter().filter(|o| matches(o)) {
            if tx.send(format("ADDED", object)).await.is_err() {
                return;
            }
        }
        if send_initial && bookmarks {
            let bookmark = json!({
                "kind": rt.kind, "apiVersion": rt.api_version(),
                "metadata": {"resourceVersion": last_rv.to_string(),
                             "annotations": {"k8s.io/initial-events-end": "true"}},
            });
            if tx.send(event_line("BOOKMARK", &bookmark)).await.is_err() {
                return;
            }
        }
        let relevant = |e: &WatchEvent| {
            e.resource == key && namespace.as_deref().is_none_or(|ns| e.namespace == ns)
        };
        let translate = |e: &WatchEvent| -> Option<&'static str> {
            let now = matches(&e.object);
            match e.event_type {
                "MODIFIED" => {
                    let before = e.previous.as_ref().is_some_and(&matches);
                    match (before, now) {
                        (true, true) => Some("MODIFIED"),
                        (false, true) => Some("ADDED"),
                        (true, false) => Some("DELETED"),
                        (false, false) => None,
                    }
                }
                other => now.then_some(other),
            }
        };
        for event in subscription.backlog.iter().filter(|e| relevant(e)) {
            last_rv = event.rv;
            if let Some(kind) = translate(event) {
                if tx.send(format(kind, &event.object)).await.is_err() {
                    return;
                }
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut bookmark_tick = tokio::time::interval(Duration::from_secs(20));
        bookmark_tick.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = bookmark_tick.tick(), if bookmarks => {
                    let bookmark = json!({"kind": rt.kind, "apiVersion": rt.api_version(),
                                          "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(event_line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                }
                received = receiver.recv() => {
                    let event = match received {
                        Ok(event) => event,
                        // A watcher that fell behind ends; the client re-lists and watches again.
                        Err(_) => return,
                    };
                    if event.rv <= last_rv || !relevant(&event) {
                        continue;
                    }
                    last_rv = event.rv;
                    if let Some(kind) = translate(&event) {
                        if tx.send(format(kind, &event.object)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::io::Error>(Frame::data(bytes)), rx))
    });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Whether a pod still counts for its controller (not being deleted).
/// A pod a controller counts (Kubernetes' `FilterActivePods`): not being deleted and not
/// ended (phase Succeeded or Failed: an evicted or completed pod stays, but is not one of
/// the workload's replicas any more).
pub fn is_active(obj: &Value) -> bool {
    !is_deleting(obj) && !is_ended(obj)
}

/// Phase Succeeded or Failed: the pod's containers are gone for good.
pub fn is_ended(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded") | Some("Failed")
    )
}
