//! Typed MQTT topics (DESIGN.md "MQTT topics"). Every topic string the agent publishes or
//! subscribes to is built here; nothing else formats topics.
//!
//! Layout under a configurable prefix (default `fleet`):
//! - `<p>/<device>/status` (up, retained, Last Will)
//! - `<p>/<device>/telemetry/<stream>` (up, QoS 1)
//! - `<p>/<device>/deployment/desired`, `<p>/groups/<group>/deployment/desired` (down, retained)
//! - `<p>/<device>/deployment/reported` (up, retained)
//! - `<p>/<device>/cmd/<name>` (down) and `<p>/<device>/cmd/<name>/result` (up)

/// Default topic prefix.
pub const DEFAULT_PREFIX: &str = "fleet";

/// Topic builder for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    device: String,
}

/// A downlink topic, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downlink {
    /// `<p>/<device>/deployment/desired`
    DeviceDesired,
    /// `<p>/groups/<group>/deployment/desired`
    GroupDesired(String),
    /// `<p>/<device>/cmd/<name>`
    Command(String),
}

/// Whether `s` is usable as one topic level (no wildcards, separators or NUL).
pub fn is_valid_segment(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

impl Topics {
    /// Topics for `device` under `prefix`.
    pub fn new(prefix: &str, device: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
            device: device.to_owned(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The device id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// `<p>/<device>/status`
    pub fn status(&self) -> String {
        format!("{}/{}/status", self.prefix, self.device)
    }

    /// `<p>/<device>/telemetry/<stream>`
    pub fn telemetry(&self, stream: &str) -> String {
        format!("{}/{}/telemetry/{stream}", self.prefix, self.device)
    }

    /// `<p>/<device>/telemetry/#` (for `fleetlet tail`); `device = "+"` for all devices.
    pub fn telemetry_filter(prefix: &str, device: Option<&str>) -> String {
        format!(
            "{}/{}/telemetry/#",
            prefix.trim_end_matches('/'),
            device.unwrap_or("+")
        )
    }

    /// `<p>/<device>/deployment/desired`
    pub fn desired(&self) -> String {
        format!("{}/{}/deployment/desired", self.prefix, self.device)
    }

    /// `<p>/groups/<group>/deployment/desired`
    pub fn group_desired(&self, group: &str) -> String {
        format!("{}/groups/{group}/deployment/desired", self.prefix)
    }

    /// `<p>/<device>/deployment/reported`
    pub fn reported(&self) -> String {
        format!("{}/{}/deployment/reported", self.prefix, self.device)
    }

    /// `<p>/<device>/cmd/+` (subscription filter).
    pub fn commands_filter(&self) -> String {
        format!("{}/{}/cmd/+", self.prefix, self.device)
    }

    /// `<p>/<device>/cmd/<name>/result`
    pub fn command_result(&self, name: &str) -> String {
        format!("{}/{}/cmd/{name}/result", self.prefix, self.device)
    }

    /// Every downlink subscription filter for this device and its groups.
    pub fn downlink_filters(&self, groups: &[String]) -> Vec<String> {
        let mut v = vec![self.desired(), self.commands_filter()];
        v.extend(groups.iter().map(|g| self.group_desired(g)));
        v
    }

    /// Classifies a received topic; `None` for anything that is not one of our downlinks.
    pub fn parse_downlink(&self, topic: &str) -> Option<Downlink> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [d, "deployment", "desired"] if *d == self.device => Some(Downlink::DeviceDesired),
            ["groups", g, "deployment", "desired"] if is_valid_segment(g) => {
                Some(Downlink::GroupDesired((*g).to_owned()))
            }
            [d, "cmd", name] if *d == self.device && is_valid_segment(name) => {
                Some(Downlink::Command((*name).to_owned()))
            }
            _ => None,
        }
    }

    /// Splits `<p>/<device>/telemetry/<stream>` into (device, stream).
    pub fn parse_telemetry<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = topic
            .strip_prefix(prefix.trim_end_matches('/'))?
            .strip_prefix('/')?;
        let (device, rest) = rest.split_once('/')?;
        let stream = rest.strip_prefix("telemetry/")?;
        (!device.is_empty() && !stream.is_empty()).then_some((device, stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_design_table() {
        let t = Topics::new("fleet", "robot-7");
        assert_eq!(t.status(), "fleet/robot-7/status");
        assert_eq!(t.telemetry("events"), "fleet/robot-7/telemetry/events");
        assert_eq!(t.desired(), "fleet/robot-7/deployment/desired");
        assert_eq!(t.group_desired("eu"), "fleet/groups/eu/deployment/desired");
        assert_eq!(t.reported(), "fleet/robot-7/deployment/reported");
        assert_eq!(t.commands_filter(), "fleet/robot-7/cmd/+");
        assert_eq!(
            t.command_result("restart"),
            "fleet/robot-7/cmd/restart/result"
        );
    }

    #[test]
    fn custom_prefix_may_have_levels() {
        let t = Topics::new("acme/prod/", "r1");
        assert_eq!(t.status(), "acme/prod/r1/status");
        assert_eq!(
            t.parse_downlink("acme/prod/r1/cmd/reboot"),
            Some(Downlink::Command("reboot".into()))
        );
    }

    #[test]
    fn downlink_parsing_rejects_other_devices_and_shapes() {
        let t = Topics::new("fleet", "r1");
        assert_eq!(
            t.parse_downlink("fleet/r1/deployment/desired"),
            Some(Downlink::DeviceDesired)
        );
        assert_eq!(
            t.parse_downlink("fleet/groups/eu/deployment/desired"),
            Some(Downlink::GroupDesired("eu".into()))
        );
        assert_eq!(t.parse_downlink("fleet/r2/deployment/desired"), None);
        assert_eq!(t.parse_downlink("fleet/r1/cmd/a/result"), None);
        assert_eq!(t.parse_downlink("fleetx/r1/cmd/a"), None);
        assert_eq!(t.parse_downlink("other/r1/cmd/a"), None);
    }

    #[test]
    fn telemetry_topics_parse_back() {
        assert_eq!(
            Topics::parse_telemetry("fleet", "fleet/r1/telemetry/ros/pose"),
            Some(("r1", "ros/pose"))
        );
        assert_eq!(Topics::parse_telemetry("fleet", "fleet/r1/status"), None);
        assert_eq!(
            Topics::telemetry_filter("fleet", None),
            "fleet/+/telemetry/#"
        );
    }
}
