//! What kubectl sends as protobuf, decoded: `kubectl create configmap` and `kubectl
//! create secret` POST their object as `application/vnd.kubernetes.protobuf`, and
//! client-go falls back to JSON on a 415 only for CBOR, so a server must read it.
//!
//! The body is Kubernetes' envelope: the magic `k8s\0`, then a `runtime.Unknown` whose
//! `raw` is the object. prost reads the wire format; only the messages and fields those
//! objects carry are described here (field numbers from k8s.io/api's generated.proto),
//! and the object becomes the JSON the rest of the simulator stores. Unknown fields are
//! skipped, as protobuf does.

use std::collections::BTreeMap;

use base64::Engine;
use prost::Message;
use serde_json::{json, Value};

const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, string", tag = "2")]
    data: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    binary_data: BTreeMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    type_: Option<String>,
    #[prost(btree_map = "string, string", tag = "4")]
    string_data: BTreeMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn metadata(meta: Option<ObjectMeta>) -> Value {
    let meta = meta.unwrap_or_default();
    let mut out = json!({});
    if let Some(n) = meta.name {
        out["name"] = json!(n);
    }
    if let Some(n) = meta.generate_name {
        out["generateName"] = json!(n);
    }
    if let Some(n) = meta.namespace {
        out["namespace"] = json!(n);
    }
    if !meta.labels.is_empty() {
        out["labels"] = json!(meta.labels);
    }
    if !meta.annotations.is_empty() {
        out["annotations"] = json!(meta.annotations);
    }
    out
}

/// The JSON object of a protobuf request body, or why it cannot be read.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("the protobuf body does not start with the k8s\\0 magic")?;
    let unknown = Unknown::decode(envelope).map_err(|e| format!("bad envelope: {e}"))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let mut object = match kind.as_str() {
        "ConfigMap" => {
            let cm =
                ConfigMap::decode(raw.as_slice()).map_err(|e| format!("bad ConfigMap: {e}"))?;
            let mut o = json!({"metadata": metadata(cm.metadata)});
            if !cm.data.is_empty() {
                o["data"] = json!(cm.data);
            }
            if !cm.binary_data.is_empty() {
                let binary: BTreeMap<&String, String> =
                    cm.binary_data.iter().map(|(k, v)| (k, b64(v))).collect();
                o["binaryData"] = json!(binary);
            }
            if let Some(i) = cm.immutable {
                o["immutable"] = json!(i);
            }
            o
        }
        "Secret" => {
            let s = Secret::decode(raw.as_slice()).map_err(|e| format!("bad Secret: {e}"))?;
            let mut o = json!({"metadata": metadata(s.metadata)});
            if !s.data.is_empty() {
                let data: BTreeMap<&String, String> =
                    s.data.iter().map(|(k, v)| (k, b64(v))).collect();
                o["data"] = json!(data);
            }
            if !s.string_data.is_empty() {
                o["stringData"] = json!(s.string_data);
            }
            if let Some(t) = s.type_ {
                o["type"] = json!(t);
            }
            if let Some(i) = s.immutable {
                o["immutable"] = json!(i);
            }
            o
        }
        other => {
            return Err(format!(
                "the simulator reads protobuf bodies of ConfigMap and Secret only (got {other:?}); \
                 send JSON"
            ))
        }
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    #[test]
    fn a_configmap_round_trips_to_json() {
        let cm = ConfigMap {
            metadata: Some(ObjectMeta {
                name: Some("x".into()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            data: BTreeMap::from([("a".into(), "b".into())]),
            binary_data: BTreeMap::from([("bin".into(), vec![0, 255])]),
            immutable: None,
        };
        let v = decode(&envelope("ConfigMap", cm.encode_to_vec())).unwrap();
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(v["metadata"]["name"], "x");
        assert_eq!(v["data"]["a"], "b");
        assert_eq!(v["binaryData"]["bin"], "AP8=");
    }

    #[test]
    fn other_kinds_and_garbage_are_refused() {
        assert!(decode(b"{}").is_err());
        assert!(decode(&envelope("Pod", vec![]))
            .unwrap_err()
            .contains("ConfigMap and Secret"));
    }
}
