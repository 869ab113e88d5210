//! Server-side confinement of devices.
//!
//! Each device has its own NATS user. It may publish only under `latch.dev.<its id>.>` and
//! subscribe only to its command subtree and its own reply inbox; the service user may do
//! anything. The server enforces this, so a compromised cabinet cannot speak for another one.

use crate::subjects;

/// One device's NATS credentials.
#[derive(Debug, Clone)]
pub struct DeviceCredentials {
    pub device_id: String,
    pub password: String,
}

impl DeviceCredentials {
    pub fn user(&self) -> String {
        format!("device-{}", self.device_id)
    }
}

/// Renders an `authorization` block for nats-server's configuration file.
pub fn authorization_config(
    service_user: &str,
    service_password: &str,
    devices: &[DeviceCredentials],
) -> String {
    let mut users = vec![format!(
        "    {{ user: {}, password: {} }}",
        quote(service_user),
        quote(service_password)
    )];
    for d in devices {
        users.push(format!(
            "    {{ user: {user}, password: {pw}, permissions: {{ publish: {{ allow: [{pubs}] }}, subscribe: {{ allow: [{cmds}, {inbox}] }} }} }}",
            user = quote(&d.user()),
            pw = quote(&d.password),
            pubs = quote(&subjects::telemetry(&d.device_id, ">")),
            cmds = quote(&subjects::device_commands_all(&d.device_id)),
            inbox = quote(&format!("{}.>", subjects::device_inbox_prefix(&d.device_id))),
        ));
    }
    format!(
        "authorization {{\n  users = [\n{}\n  ]\n}}\n",
        users.join("\n")
    )
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}
