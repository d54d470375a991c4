//! Downlink payload decoding and the presence (`status`) payload.
//!
//! Downlink payloads come from the network: every decoder is total (returns an error, never
//! panics), bounded in size, and strict about shape so a wrong message is reported instead
//! of half-applied.

use serde::{Deserialize, Serialize};

use super::topics;

/// Default largest downlink payload accepted (bytes). Desired states and commands are small
/// JSON documents; anything bigger is a mistake or an attack.
pub const DEFAULT_DOWNLINK_MAX_BYTES: usize = 64 * 1024;

/// Why a downlink payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Larger than `mqtt.downlink_max_bytes`.
    #[error("payload of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not UTF-8 JSON of the expected shape.
    #[error("invalid {what} payload: {source}")]
    Json {
        /// What we expected.
        what: &'static str,
        /// serde's error (names the field).
        source: serde_json::Error,
    },
    /// A value is out of range.
    #[error("invalid {what} payload: {message}")]
    Invalid {
        /// What we expected.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Staged rollout: a device is in when `hash(salt, device) mod 100 < percent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Percentage of devices (0..=100).
    pub percent: u8,
    /// Salt mixed into the membership hash.
    #[serde(default)]
    pub salt: String,
}

/// Desired deployment (`.../deployment/desired`, retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// Where the signed manifest lives.
    pub manifest_url: String,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// Optional staged rollout.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

/// A remote command request (`.../cmd/<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// Request id, echoed in the result.
    pub id: String,
    /// Arguments.
    #[serde(default)]
    pub args: serde_json::Value,
    /// Operator signature (base64) over the canonical request, when config requires it.
    #[serde(default)]
    pub signature: Option<String>,
    /// Id of the operator key that signed.
    #[serde(default)]
    pub key_id: Option<String>,
}

/// Where a desired state applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// This device.
    Device,
    /// A group the device belongs to.
    Group(String),
}

/// A valid downlink message.
#[derive(Debug, Clone, PartialEq)]
pub enum Downlink {
    /// A desired deployment was set (`Some`) or cleared (empty retained payload, `None`).
    Desired {
        /// Device or group.
        scope: Scope,
        /// The desired state.
        desired: Option<Desired>,
    },
    /// A remote command.
    Command {
        /// Command name from the topic.
        name: String,
        /// The request.
        request: CommandRequest,
    },
}

/// Decodes a payload received on downlink topic `kind`.
///
/// # Errors
/// [`Error`] naming what is wrong; the caller counts and ignores it.
pub fn decode(kind: topics::Downlink, payload: &[u8], max: usize) -> Result<Downlink, Error> {
    if payload.len() > max {
        return Err(Error::TooLarge {
            size: payload.len(),
            max,
        });
    }
    match kind {
        topics::Downlink::DeviceDesired | topics::Downlink::GroupDesired(_) => {
            let scope = match kind {
                topics::Downlink::GroupDesired(g) => Scope::Group(g),
                _ => Scope::Device,
            };
            if payload.is_empty() {
                return Ok(Downlink::Desired {
                    scope,
                    desired: None,
                });
            }
            let d: Desired = serde_json::from_slice(payload).map_err(|source| Error::Json {
                what: "deployment/desired",
                source,
            })?;
            if d.manifest_url.is_empty() {
                return Err(Error::Invalid {
                    what: "deployment/desired",
                    message: "manifest_url is empty".into(),
                });
            }
            let hex = d.digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Invalid {
                    what: "deployment/desired",
                    message: format!("digest {:?} is not sha256:<64 hex digits>", d.digest),
                });
            }
            if let Some(r) = &d.rollout {
                if r.percent > 100 {
                    return Err(Error::Invalid {
                        what: "deployment/desired",
                        message: format!("rollout.percent {} is above 100", r.percent),
                    });
                }
            }
            Ok(Downlink::Desired {
                scope,
                desired: Some(d),
            })
        }
        topics::Downlink::Command(name) => {
            let request: CommandRequest =
                serde_json::from_slice(payload).map_err(|source| Error::Json {
                    what: "cmd",
                    source,
                })?;
            if request.id.is_empty() {
                return Err(Error::Invalid {
                    what: "cmd",
                    message: "id is empty".into(),
                });
            }
            Ok(Downlink::Command { name, request })
        }
    }
}

/// The retained presence message on `<p>/<device>/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// `online` or `offline`.
    pub state: String,
    /// Agent version.
    pub version: String,
    /// Boot id of this agent start.
    pub boot: String,
}

impl Presence {
    /// JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn desired_state_decodes_and_empty_payload_clears() {
        let p = format!(
            r#"{{"manifest_url":"https://x/m.json","digest":"{DIGEST}","rollout":{{"percent":20,"salt":"a"}}}}"#
        );
        let d = decode(
            topics::Downlink::GroupDesired("eu".into()),
            p.as_bytes(),
            1024,
        )
        .unwrap();
        assert!(
            matches!(d, Downlink::Desired { scope: Scope::Group(ref g), desired: Some(ref x) } if g == "eu" && x.rollout.as_ref().unwrap().percent == 20)
        );
        assert_eq!(
            decode(topics::Downlink::DeviceDesired, b"", 1024).unwrap(),
            Downlink::Desired {
                scope: Scope::Device,
                desired: None
            }
        );
    }

    #[test]
    fn wrong_shapes_are_named() {
        let e = decode(
            topics::Downlink::DeviceDesired,
            br#"{"manifest_url":"u"}"#,
            1024,
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing field `digest`"), "{e}");
        let e = decode(
            topics::Downlink::DeviceDesired,
            format!(r#"{{"manifest_url":"u","digest":"{DIGEST}","x":1}}"#).as_bytes(),
            1024,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
        let e = decode(
            topics::Downlink::DeviceDesired,
            br#"{"manifest_url":"u","digest":"md5:1"}"#,
            1024,
        )
        .unwrap_err();
        assert!(e.to_string().contains("md5:1"), "{e}");
        let e = decode(topics::Downlink::Command("x".into()), &[0u8; 2000], 1024).unwrap_err();
        assert!(matches!(
            e,
            Error::TooLarge {
                size: 2000,
                max: 1024
            }
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(topics::Downlink::DeviceDesired, &bytes, 256);
            let _ = decode(topics::Downlink::Command("c".into()), &bytes, 256);
        }
    }
}
