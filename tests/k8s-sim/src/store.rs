//! The object store: every object as JSON, one global resourceVersion counter, a bounded
//! history of watch events (so a watch can resume from a resourceVersion), and
//! persistence to a JSON file in the state directory.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::resources::{self, ResourceType};

/// (resource key, namespace or "", name)
pub type ObjKey = (String, String, String);

const HISTORY_LIMIT: usize = 50_000;

#[derive(Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub resource: String,
    pub namespace: String,
    pub event_type: &'static str,
    pub object: Value,
    /// The object before a MODIFIED event (to turn selector matches into ADDED/DELETED).
    pub previous: Option<Value>,
}

/// An error the API returns as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    fn with_details(
        code: u16,
        reason: &'static str,
        message: String,
        rt: Option<&ResourceType>,
        name: &str,
    ) -> Self {
        let mut details = json!({});
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        if let Some(rt) = rt {
            if !rt.group.is_empty() {
                details["group"] = json!(rt.group);
            }
            details["kind"] = json!(rt.plural);
        }
        ApiError {
            code,
            reason,
            message,
            details,
        }
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::with_details(
            404,
            "NotFound",
            format!("{} \"{}\" not found", qualified(rt), name),
            Some(rt),
            name,
        )
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::with_details(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", qualified(rt), name),
            Some(rt),
            name,
        )
    }

    pub fn conflict(rt: &ResourceType, name: &str, why: &str) -> Self {
        Self::with_details(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                qualified(rt),
                name,
                why
            ),
            Some(rt),
            name,
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::with_details(400, "BadRequest", message.into(), None, "")
    }

    pub fn invalid(rt: &ResourceType, name: &str, message: impl Into<String>) -> Self {
        Self::with_details(422, "Invalid", message.into(), Some(rt), name)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::with_details(405, "MethodNotAllowed", message.into(), None, "")
    }

    pub fn not_found_path(path: &str) -> Self {
        Self::with_details(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
            None,
            "",
        )
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::with_details(410, "Expired", message.into(), None, "")
    }

    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::with_details(415, "UnsupportedMediaType", message.into(), None, "")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::with_details(500, "InternalError", message.into(), None, "")
    }

    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.details.as_object().is_some_and(|d| !d.is_empty()) {
            status["details"] = self.details.clone();
        }
        status
    }
}

fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.to_string()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}

pub fn now_rfc3339() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

pub fn parse_rfc3339(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

pub fn new_uid() -> String {
    let hex = format!("{:032x}", fastrand::u128(..));
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Random lowercase suffix in Kubernetes' alphabet (no vowels, no confusable digits).
pub fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

pub fn name_of(obj: &Value) -> &str {
    meta_str(obj, "name")
}

pub fn is_deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

struct Inner {
    objects: BTreeMap<ObjKey, Value>,
    rv: u64,
    history: VecDeque<Arc<WatchEvent>>,
    dirty: bool,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    changed: watch::Sender<u64>,
    state_file: PathBuf,
}

/// A watch subscription taken atomically with the events that precede it.
pub struct Subscription {
    /// Current objects of the requested type (when asked for instead of a backlog).
    pub snapshot: Vec<Value>,
    pub backlog: Vec<Arc<WatchEvent>>,
    pub receiver: broadcast::Receiver<Arc<WatchEvent>>,
    pub rv: u64,
}

impl Store {
    pub fn open(state_dir: &Path) -> anyhow::Result<Arc<Store>> {
        let state_file = state_dir.join("objects.json");
        let mut objects = BTreeMap::new();
        let mut rv = 1;
        if state_file.exists() {
            let text = std::fs::read_to_string(&state_file)
                .with_context(|| format!("reading {}", state_file.display()))?;
            let saved: Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", state_file.display()))?;
            rv = saved["resourceVersion"].as_u64().unwrap_or(1);
            for entry in saved["objects"].as_array().cloned().unwrap_or_default() {
                let resource = entry["resource"].as_str().unwrap_or("").to_string();
                let object = entry["object"].clone();
                let key = (
                    resource,
                    meta_str(&object, "namespace").to_string(),
                    name_of(&object).to_string(),
                );
                objects.insert(key, object);
            }
        }
        let (events, _) = broadcast::channel(16_384);
        let (changed, _) = watch::channel(rv);
        Ok(Arc::new(Store {
            inner: Mutex::new(Inner {
                objects,
                rv,
                history: VecDeque::new(),
                dirty: false,
            }),
            events,
            changed,
            state_file,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent JSON values behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().objects.is_empty()
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn emit(
        &self,
        inner: &mut Inner,
        resource: &str,
        namespace: &str,
        event_type: &'static str,
        object: Value,
        previous: Option<Value>,
    ) {
        let event = Arc::new(WatchEvent {
            rv: inner.rv,
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            event_type,
            object,
            previous,
        });
        inner.history.push_back(event.clone());
        while inner.history.len() > HISTORY_LIMIT {
            inner.history.pop_front();
        }
        inner.dirty = true;
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
        self.changed.send_replace(inner.rv);
    }

    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<Value> {
        let key = (rt.key(), ns_for(rt, namespace), name.to_string());
        self.lock().objects.get(&key).cloned()
    }

    /// Objects of one type, in one namespace or all (`None`), with the list's resourceVersion.
    pub fn list(&self, rt: &ResourceType, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let key = rt.key();
        let items = inner
            .objects
            .iter()
            .filter(|((r, ns, _), _)| {
                *r == key && namespace.is_none_or(|want| !rt.namespaced || ns == want)
            })
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    pub fn create(
        &self,
        rt: &ResourceType,
        namespace: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let namespace = ns_for(rt, namespace);
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body is not a JSON object",
            ));
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let mut name = name_of(&obj).to_string();
        if name.is_empty() {
            match obj["metadata"]["generateName"].as_str() {
                Some(prefix) => name = format!("{prefix}{}", random_suffix(5)),
                None => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        "name or generateName is required",
                    ))
                }
            }
        }
        if let Some(body_ns) = obj["metadata"]["namespace"].as_str() {
            if rt.namespaced && !body_ns.is_empty() && body_ns != namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let mut inner = self.lock();
        if rt.namespaced {
            let ns_key = ("namespaces".to_string(), String::new(), namespace.clone());
            if !inner.objects.contains_key(&ns_key) {
                return Err(ApiError::with_details(
                    404,
                    "NotFound",
                    format!("namespaces \"{namespace}\" not found"),
                    resources::by_key("namespaces"),
                    &namespace,
                ));
            }
        }
        let key = (rt.key(), namespace.clone(), name.clone());
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        inner.rv += 1;
        let rv = inner.rv;
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if rt.namespaced {
            meta["namespace"] = json!(namespace);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["uid"] = json!(new_uid());
        meta["resourceVersion"] = json!(rv.to_string());
        meta["creationTimestamp"] = json!(now_rfc3339());
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        if obj.get("spec").is_some() {
            obj["metadata"]["generation"] = json!(1);
        }
        inner.objects.insert(key, obj.clone());
        self.emit(
            &mut inner,
            &rt.key(),
            &namespace,
            "ADDED",
            obj.clone(),
            None,
        );
        Ok(obj)
    }

    /// Read-modify-write one object. No change → no new resourceVersion and no event.
    /// An object left with a deletionTimestamp and no finalizers is removed (except pods,
    /// which the kubelet removes once their processes are gone).
    pub fn update_with<F>(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        change: F,
    ) -> Result<Value, ApiError>
    where
        F: FnOnce(&mut Value) -> Result<(), ApiError>,
    {
        let namespace = ns_for(rt, namespace);
        let key = (rt.key(), namespace.clone(), name.to_string());
        let mut inner = self.lock();
        let current = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let mut updated = current.clone();
        change(&mut updated)?;
        // Identity fields are the server's.
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            updated["metadata"][field] = current["metadata"][field].clone();
        }
        if let Some(m) = updated["metadata"].as_object_mut() {
            m.retain(|_, v| !v.is_null());
        }
        if is_deleting(&current) {
            updated["metadata"]["deletionTimestamp"] =
                current["metadata"]["deletionTimestamp"].clone();
        }
        updated["apiVersion"] = json!(rt.api_version());
        updated["kind"] = json!(rt.kind);
        updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if updated == current {
            return Ok(current);
        }
        if updated.get("spec") != current.get("spec") {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            updated["metadata"]["generation"] = json!(generation);
        }
        inner.rv += 1;
        let rv = inner.rv;
        updated["metadata"]["resourceVersion"] = json!(rv.to_string());
        let finalizers_empty = updated["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        if rt.plural != "pods" && is_deleting(&updated) && finalizers_empty {
            inner.objects.remove(&key);
            self.emit(
                &mut inner,
                &rt.key(),
                &namespace,
                "DELETED",
                updated.clone(),
                None,
            );
            return Ok(updated);
        }
        inner.objects.insert(key, updated.clone());
        self.emit(
            &mut inner,
            &rt.key(),
            &namespace,
            "MODIFIED",
            updated.clone(),
            Some(current),
        );
        Ok(updated)
    }

    /// Remove an object now; returns it as last seen (with the deletion's resourceVersion).
    pub fn remove(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<Value> {
        let namespace = ns_for(rt, namespace);
        let key = (rt.key(), namespace.clone(), name.to_string());
        let mut inner = self.lock();
        let mut obj = inner.objects.remove(&key)?;
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        self.emit(
            &mut inner,
            &rt.key(),
            &namespace,
            "DELETED",
            obj.clone(),
            None,
        );
        Some(obj)
    }

    /// Subscribe to events of all types after `since`; with `since == None`, take a snapshot
    /// of the current objects of `rt` instead (the start of a watch without resourceVersion).
    pub fn subscribe(
        &self,
        since: Option<u64>,
        rt: &ResourceType,
        namespace: Option<&str>,
    ) -> Result<Subscription, ApiError> {
        let inner = self.lock();
        let receiver = self.events.subscribe();
        let mut backlog = Vec::new();
        let mut snapshot = Vec::new();
        if since.is_none() {
            let key = rt.key();
            snapshot = inner
                .objects
                .iter()
                .filter(|((r, ns, _), _)| {
                    *r == key && namespace.is_none_or(|want| !rt.namespaced || ns == want)
                })
                .map(|(_, v)| v.clone())
                .collect();
        }
        if let Some(since) = since {
            if since < inner.rv {
                let oldest = inner.history.front().map(|e| e.rv).unwrap_or(inner.rv + 1);
                // Events between `since` and the oldest one kept are lost: the client must re-list.
                if since + 1 < oldest {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {since} ({})",
                        oldest.saturating_sub(1)
                    )));
                }
                backlog = inner
                    .history
                    .iter()
                    .filter(|e| e.rv > since)
                    .cloned()
                    .collect();
            }
        }
        Ok(Subscription {
            snapshot,
            backlog,
            receiver,
            rv: inner.rv,
        })
    }

    /// Write the store to the state file if it changed since the last save.
    pub fn save_if_dirty(&self) -> anyhow::Result<()> {
        let snapshot = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            let objects: Vec<Value> = inner
                .objects
                .iter()
                .map(|((resource, _, _), object)| json!({"resource": resource, "object": object}))
                .collect();
            json!({"resourceVersion": inner.rv, "objects": objects})
        };
        let tmp = self.state_file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&snapshot)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state_file)
            .with_context(|| format!("renaming to {}", self.state_file.display()))?;
        Ok(())
    }
}

fn ns_for(rt: &ResourceType, namespace: &str) -> String {
    if rt.namespaced {
        namespace.to_string()
    } else {
        String::new()
    }
}

/// JSON merge patch (RFC 7386); strategic merge patches are applied the same way.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch_map) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(target_map) = target {
                for (key, value) in patch_map {
                    if value.is_null() {
                        target_map.remove(key);
                    } else {
                        merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// JSON patch (RFC 6902): add, remove, replace, test, copy, move.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array"))?;
    for op in ops {
        let path = op["path"].as_str().unwrap_or("");
        match op["op"].as_str().unwrap_or("") {
            "add" => pointer_set(target, path, op["value"].clone(), true)?,
            "replace" => pointer_set(target, path, op["value"].clone(), false)?,
            "remove" => {
                pointer_remove(target, path)?;
            }
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(ApiError::with_details(
                        422,
                        "Invalid",
                        format!("test operation failed at {path}"),
                        None,
                        "",
                    ));
                }
            }
            "copy" | "move" => {
                let from = op["from"].as_str().unwrap_or("");
                let value = if op["op"] == "move" {
                    pointer_remove(target, from)?
                } else {
                    target
                        .pointer(from)
                        .cloned()
                        .ok_or_else(|| ApiError::bad_request(format!("no value at {from}")))?
                };
                pointer_set(target, path, value, true)?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown JSON patch op {other:?}"
                )))
            }
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(String, String), ApiError> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| ApiError::bad_request(format!("bad JSON pointer {path:?}")))?;
    let last = path[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..idx].to_string(), last))
}

fn pointer_set(target: &mut Value, path: &str, value: Value, insert: bool) -> Result<(), ApiError> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let parent = target
        .pointer_mut(&parent)
        .ok_or_else(|| ApiError::bad_request(format!("no parent for {path}")))?;
    match parent {
        Value::Object(map) => {
            map.insert(last, value);
        }
        Value::Array(items) => {
            if last == "-" {
                items.push(value);
            } else {
                let index: usize = last
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("bad array index in {path}")))?;
                if insert && index <= items.len() {
                    items.insert(index, value);
                } else if !insert && index < items.len() {
                    items[index] = value;
                } else {
                    return Err(ApiError::bad_request(format!(
                        "array index out of range in {path}"
                    )));
                }
            }
        }
        _ => return Err(ApiError::bad_request(format!("cannot set {path}"))),
    }
    Ok(())
}

fn pointer_remove(target: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split_pointer(path)?;
    let parent = target
        .pointer_mut(&parent)
        .ok_or_else(|| ApiError::bad_request(format!("no parent for {path}")))?;
    let removed = match parent {
        Value::Object(map) => map.remove(&last),
        Value::Array(items) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < items.len())
            .map(|i| items.remove(i)),
        _ => None,
    };
    removed.ok_or_else(|| ApiError::bad_request(format!("nothing to remove at {path}")))
}
