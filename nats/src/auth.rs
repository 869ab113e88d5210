//! Server-side confinement of devices.
//!
//! Each device has its own NATS user. It may publish only under `latch.dev.<its id>.>` and
//! subscribe only to its command subtree and its own reply inbox; the service user may do
//! anything. A device may also answer a request it received (`allow_responses`: one reply to
//! the request's own reply subject, which the server grants per request), so it can
//! acknowledge a command such as `latch.cmd.<id>.holder` without any right to publish
//! elsewhere. The server enforces this, so a compromised cabinet cannot speak for another one.
//!
//! Identities issued at registration are nkey users ([`identities_config`]): the server knows
//! only their public keys and checks a signature of its nonce at connect, so the rendered file
//! holds no secret and nothing costly (bcrypt) is paid per registration or per connect.
//! [`authorization_config`] is the older hand-fed form (`latch nats-config`, plain passwords).

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
            "    {{ user: {user}, password: {pw}, permissions: {{ publish: {{ allow: [{pubs}] }}, subscribe: {{ allow: [{cmds}, {inbox}] }}, allow_responses: true }} }}",
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

/// Whose NATS identity a user is, which decides what it may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A cabinet or locker: its own telemetry, commands and reply inbox.
    Device(String),
    /// A locker authorizer: its own grant requests, confirmations and answers, and reply inbox.
    Authorizer(String),
}

/// How an issued identity logs in, as the server is told. Neither is a usable secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// An nkey user's public key (`U...`): the client signs the server's nonce with its seed,
    /// which never leaves the HTTP answer. Every identity issued or rotated now.
    Nkey(String),
    /// A bcrypt hash (`$2a$...`/`$2b$`) of a password, which nats-server checks itself:
    /// identities issued before nkeys (migration 0043), until rotated.
    PasswordHash(String),
}

/// One issued identity as the server sees it.
#[derive(Debug, Clone)]
pub struct IssuedIdentity {
    /// The stable name (`device-<id>`, `authorizer-<number>`) operators rotate and revoke by. An
    /// nkey user is known to the server by its public key; the name is not rendered for it.
    pub user: String,
    pub login: Login,
    pub principal: Principal,
}

/// The NATS user name of a device.
pub fn device_user(device_id: &str) -> String {
    format!("device-{device_id}")
}

/// The NATS user name of an authorizer.
pub fn authorizer_user(number: &str) -> String {
    format!("authorizer-{}", crate::subjects::token(number))
}

/// The reply-inbox prefix an authorizer's client must use (`custom_inbox_prefix`).
pub fn authorizer_inbox_prefix(number: &str) -> String {
    format!("_INBOX.authorizer-{}", crate::subjects::token(number))
}

/// Renders an `authorization` block: the service user (anything; user and password, the
/// password written as given, so pass a bcrypt hash) and every issued identity, each confined
/// to its own subjects: nkey users as `{ nkey: "U...", permissions }`, identities from before
/// nkeys as `{ user, password: <bcrypt hash>, permissions }`.
pub fn identities_config(
    service_user: &str,
    service_password: &str,
    identities: &[IssuedIdentity],
) -> String {
    let mut users = vec![format!(
        "    {{ user: {}, password: {} }}",
        quote(service_user),
        quote(service_password)
    )];
    for i in identities {
        // Devices answer requests on their command subjects (the holder command).
        let responds = matches!(i.principal, Principal::Device(_));
        let (pubs, subs) = match &i.principal {
            Principal::Device(id) => (
                vec![subjects::telemetry(id, ">")],
                vec![
                    subjects::device_commands_all(id),
                    format!("{}.>", subjects::device_inbox_prefix(id)),
                ],
            ),
            Principal::Authorizer(n) => (
                {
                    // Its grant feed: read and ack the durable consumer Latch made for it.
                    let feed = crate::streams::authorizer_feed_consumer(n);
                    let stream = subjects::GRANTS_STREAM;
                    vec![
                        subjects::authorizer_answers(n),
                        format!("$JS.API.CONSUMER.INFO.{stream}.{feed}"),
                        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{feed}"),
                        format!("$JS.ACK.{stream}.{feed}.>"),
                    ]
                },
                vec![
                    subjects::authorizer_grants(n),
                    subjects::authorizer_confirmations(n),
                    format!("{}.>", authorizer_inbox_prefix(n)),
                ],
            ),
        };
        let list = |v: Vec<String>| v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ");
        // nats-server takes nkey users and user/password users in the same `users` list.
        let login = match &i.login {
            Login::Nkey(public) => format!("nkey: {}", quote(public)),
            Login::PasswordHash(hash) => {
                format!("user: {}, password: {}", quote(&i.user), quote(hash))
            }
        };
        users.push(format!(
            "    {{ {login}, permissions: {{ publish: {{ allow: [{pubs}] }}, subscribe: {{ allow: [{subs}] }}{responses} }} }}",
            pubs = list(pubs),
            subs = list(subs),
            responses = if responds { ", allow_responses: true" } else { "" },
        ));
    }
    format!(
        "authorization {{\n  users = [\n{}\n  ]\n}}\n",
        users.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nkey_users_are_rendered_by_public_key_and_older_ones_by_user_and_hash() {
        let key = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4";
        let text = identities_config(
            "latch",
            "$2a$04$service",
            &[
                IssuedIdentity {
                    user: device_user("d1"),
                    login: Login::Nkey(key.into()),
                    principal: Principal::Device("d1".into()),
                },
                IssuedIdentity {
                    user: authorizer_user("A1"),
                    login: Login::PasswordHash("$2a$04$old".into()),
                    principal: Principal::Authorizer("A1".into()),
                },
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2],
            r#"    { user: "latch", password: "$2a$04$service" }"#
        );
        // The nkey user: no name, no password; the same confinement as before.
        assert!(lines[3].starts_with(&format!(r#"    {{ nkey: "{key}", permissions: "#)));
        assert!(!lines[3].contains("user:") && !lines[3].contains("password:"));
        assert!(lines[3].contains(r#"publish: { allow: ["latch.dev.d1.>"] }"#));
        assert!(lines[3].contains("allow_responses: true"));
        assert!(lines[4]
            .starts_with(r#"    { user: "authorizer-A1", password: "$2a$04$old", permissions: "#));
        assert!(
            lines[4].contains(r#""latch.authorizers.A1.answers""#),
            "{}",
            lines[4]
        );
    }
}
