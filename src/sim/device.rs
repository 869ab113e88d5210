//! Publishing: one simulated cabinet's telemetry, through JetStream, each after the last was acknowledged.

use super::*;

/// One simulated cabinet's publishing side.
#[derive(Clone)]
pub struct SimDevice {
    pub id: Uuid,
    js: Context,
    boot: i64,
    counter: Arc<AtomicU64>,
}

impl SimDevice {
    pub fn new(id: Uuid, js: Context) -> Self {
        Self {
            id,
            js,
            boot: Utc::now().timestamp_millis(),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The connection the cabinet speaks on (its own, when it has a NATS identity).
    pub fn client(&self) -> async_nats::Client {
        self.js.client()
    }

    fn wire(&self, kind: &str) -> WireTelemetry {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        WireTelemetry {
            v: 1,
            msg_id: format!("{}-{n}", self.boot),
            device_id: self.id.to_string(),
            sent_at: Utc::now(),
            kind: kind.to_owned(),
            uptime_s: None,
            temperature_c: None,
            state: None,
            request_id: None,
            code: None,
            message: None,
            active: None,
            session_id: None,
            phase: None,
            shelves: None,
        }
    }

    /// Publishes through JetStream and waits for the stream's ack. No Nats-Msg-Id: the
    /// stream's dedupe is shared by all devices (so not trusted); Latch deduplicates on
    /// (device, msg_id) from the subject and payload.
    pub async fn send(&self, wire: WireTelemetry) -> Result<(), async_nats::Error> {
        let subject = subjects::telemetry(&wire.device_id, &wire.kind);
        let body = serde_json::to_vec(&wire)?;
        self.js
            .send_publish(subject, PublishMessage::build().payload(body.into()))
            .await?
            .await?;
        Ok(())
    }

    pub async fn heartbeat(&self, uptime_s: u64) -> Result<(), async_nats::Error> {
        let mut w = self.wire("heartbeat");
        w.uptime_s = Some(uptime_s.into());
        w.temperature_c = serde_json::Number::from_f64(4.0);
        self.send(w).await
    }

    pub async fn door(
        &self,
        open: bool,
        request_id: Option<Uuid>,
    ) -> Result<(), async_nats::Error> {
        let mut w = self.wire("door");
        w.state = Some(if open { "open" } else { "closed" }.to_owned());
        w.request_id = request_id;
        self.send(w).await
    }

    pub async fn fault(&self, active: bool, code: &str) -> Result<(), async_nats::Error> {
        let mut w = self.wire("fault");
        w.code = Some(code.to_owned());
        w.message = Some(if active { "simulated fault" } else { "cleared" }.to_owned());
        w.active = Some(active);
        self.send(w).await
    }

    pub async fn refuse(&self, request_id: Uuid, reason: &str) -> Result<(), async_nats::Error> {
        let mut w = self.wire("open_refused");
        w.request_id = Some(request_id);
        w.message = Some(reason.to_owned());
        self.send(w).await
    }

    /// A `weights` report for a shopper's session.
    pub async fn weights(
        &self,
        session_id: Uuid,
        phase: WeighingPhase,
        shelves: Vec<RawReading>,
    ) -> Result<(), async_nats::Error> {
        let mut w = self.wire("weights");
        w.session_id = Some(session_id);
        w.phase = Some(
            match phase {
                WeighingPhase::Before => "before",
                WeighingPhase::After => "after",
            }
            .to_owned(),
        );
        w.shelves = Some(shelves);
        self.send(w).await
    }
}
