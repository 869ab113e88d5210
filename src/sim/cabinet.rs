//! Running cabinets: the per-cabinet loop that answers commands and control subjects.

use super::holder::HolderTable;
use super::identity;
use super::*;

/// Runs every configured cabinet until `shutdown`.
pub async fn run(client: async_nats::Client, config: SimConfig, shutdown: CancellationToken) {
    let js = latch_nats::jetstream(client.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for id in &config.devices {
        let faulty = config.faulty.contains(id);
        let span = tracing::info_span!("sim", device = %id);
        let (id, client, js, config, shutdown) = (
            *id,
            client.clone(),
            js.clone(),
            config.clone(),
            shutdown.clone(),
        );
        tasks.spawn(
            async move {
                // Its own connection when it has a NATS identity (super::identity).
                let Some(js) = identity::device_jetstream(&config, id, &js, &shutdown).await else {
                    return;
                };
                let device = SimDevice::new(id, js);
                cabinet(client, device, faulty, config, shutdown).await
            }
            .instrument(span),
        );
    }
    tracing::info!(
        devices = config.devices.len(),
        load_cells = config.store.is_some(),
        "simulator running"
    );
    while tasks.join_next().await.is_some() {}
}

#[derive(Default)]
struct State {
    /// `None`: no planogram, so no load cells.
    stock: Option<Stock>,
    /// The one-shot script for the next shopper's opening.
    armed: Option<ShopperScript>,
    /// A locker's record of who holds each compartment it opens.
    holders: HolderTable,
}

/// What a cabinet's loop and its openings share.
struct Cabinet {
    client: async_nats::Client,
    device: SimDevice,
    config: SimConfig,
    state: Mutex<State>,
    /// Held for a whole opening: a second opening waits for the door to close.
    door: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Restock {
    units: Option<u32>,
}

impl Cabinet {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the cabinet's planogram again; on a database error the last one stays.
    async fn refresh_planogram(&self) {
        let Some(store) = &self.config.store else {
            return;
        };
        let loaded = match store.planograms.load(&self.device.id.to_string()).await {
            Ok(found) => found.and_then(|c| c.current),
            Err(e) => {
                tracing::warn!(error = %e, "planogram not read; keeping the last one");
                return;
            }
        };
        let units = self.config.units_per_slot;
        let mut state = self.state();
        match (loaded, state.stock.as_mut()) {
            (None, Some(_)) => {
                state.stock = None;
                tracing::info!("planogram gone: load cells off");
            }
            (None, None) => {}
            (Some(p), Some(stock)) => {
                if *stock.planogram() != p {
                    stock.adopt(p, units);
                    tracing::info!(slots = stock.planogram().slots().len(), "planogram changed");
                }
            }
            (Some(p), None) => {
                let slots = p.slots().len();
                state.stock = Some(Stock::new(self.device.id, p, units));
                tracing::info!(slots, units_per_slot = units, "planogram loaded, stocked");
            }
        }
    }

    async fn reply(&self, msg: &async_nats::Message, outcome: Result<(), String>) {
        let body = match &outcome {
            Ok(()) => serde_json::json!({ "ok": true }),
            Err(e) => serde_json::json!({ "ok": false, "error": e }),
        };
        self.answer(&self.client, msg, body).await
    }

    /// Publishes `body` to `msg`'s reply subject, if it has one, on `client`.
    async fn answer(
        &self,
        client: &async_nats::Client,
        msg: &async_nats::Message,
        body: serde_json::Value,
    ) {
        if let Some(reply) = &msg.reply {
            if let Err(e) = client.publish(reply.clone(), body.to_string().into()).await {
                tracing::warn!(error = %e, "reply not sent");
            }
        }
    }

    /// A `holder` command: kept if newer, answered on the device's own connection (a device
    /// may answer the requests it hears, nothing more).
    async fn holder(&self, msg: &async_nats::Message) {
        let outcome = match serde_json::from_slice::<HolderCommand>(&msg.payload) {
            Ok(update) => match self.state().holders.apply(&update) {
                Ok(changed) => {
                    tracing::info!(compartment = %update.compartment_id, holder = ?update.holder, position = update.position, changed, "holder command");
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "holder not kept");
                    Err(e)
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "unreadable holder command refused");
                Err(format!("unreadable holder command: {e}"))
            }
        };
        let body = match outcome {
            Ok(()) => serde_json::json!({ "ok": true }),
            Err(e) => serde_json::json!({ "ok": false, "error": e }),
        };
        self.answer(&self.device.client(), msg, body).await
    }

    /// A message on `latch.sim.<id>.<what>`.
    async fn control(&self, msg: async_nats::Message, faulty: &mut bool) {
        let what = msg
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let outcome = match what.as_str() {
            "fault" => {
                *faulty = msg.payload.as_ref() == b"on";
                tracing::info!(faulty = *faulty, "fault switch");
                if let Err(e) = self.device.fault(*faulty, "simulated").await {
                    tracing::warn!(error = %e, "fault report not delivered");
                }
                Ok(())
            }
            "shopper" => match ShopperScript::parse(&msg.payload) {
                Ok(script) => {
                    tracing::info!(?script, "shopper script armed");
                    self.state().armed = Some(script);
                    Ok(())
                }
                Err(e) => Err(format!("shopper script refused: {e}")),
            },
            "restock" => self.restock(&msg.payload).await,
            "holders" => {
                let holders =
                    serde_json::to_value(self.state().holders.entries()).unwrap_or_default();
                let body = serde_json::json!({ "ok": true, "holders": holders });
                return self.answer(&self.client, &msg, body).await;
            }
            other => Err(format!("unknown control subject {other:?}")),
        };
        if let Err(e) = &outcome {
            tracing::warn!(subject = %msg.subject, error = %e, "control message ignored");
        }
        self.reply(&msg, outcome).await;
    }

    async fn restock(&self, body: &[u8]) -> Result<(), String> {
        let units = if body.iter().all(u8::is_ascii_whitespace) {
            self.config.units_per_slot
        } else {
            let r: Restock = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let units = r.units.unwrap_or(self.config.units_per_slot);
            if units > MAX_RESTOCK_UNITS {
                return Err(format!("units must be at most {MAX_RESTOCK_UNITS}"));
            }
            units
        };
        self.refresh_planogram().await;
        match self.state().stock.as_mut() {
            Some(stock) => {
                stock.restock(units);
                tracing::info!(units, "restocked");
                Ok(())
            }
            None => Err("the cabinet has no planogram".into()),
        }
    }

    /// Keeps the door open for `hold`, or less if the simulator is stopping.
    async fn hold(&self, hold: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    async fn open_door(&self, request_id: Uuid) {
        if let Err(e) = self.device.door(true, Some(request_id)).await {
            tracing::warn!(error = %e, "door-open event not delivered");
        }
    }

    async fn close_door(&self) {
        if let Err(e) = self.device.door(false, None).await {
            tracing::warn!(error = %e, "door-closed event not delivered");
        }
    }

    /// Carries out one open command (the cabinet is not faulty).
    async fn opening(self: Arc<Self>, open: OpenCommand) {
        let _door = self.door.lock().await;
        if open.deadline <= Utc::now() {
            // Waited behind another opening for too long: Latch has given up on this one.
            tracing::warn!(deadline = %open.deadline, "open command expired while the door was busy; ignored");
            return;
        }
        let Some(session_id) = open.session_id else {
            tracing::info!("operator opening");
            self.open_door(open.request_id).await;
            self.hold(self.config.hold_open).await;
            self.close_door().await;
            return;
        };
        self.refresh_planogram().await;
        let script = self
            .state()
            .armed
            .take()
            .unwrap_or_else(|| self.config.shopper.clone());
        let hold = script
            .hold_ms
            .map_or(self.config.hold_open, Duration::from_millis);
        let before = self.state().stock.as_mut().map(|s| s.weigh(None, None));
        match before {
            Some(shelves) => {
                if let Err(e) = self
                    .device
                    .weights(session_id, WeighingPhase::Before, shelves)
                    .await
                {
                    tracing::warn!(error = %e, "baseline not delivered; not opening");
                    let _ = self
                        .device
                        .refuse(open.request_id, "weighing not delivered")
                        .await;
                    return;
                }
            }
            None => tracing::info!("shopper opening without load cells (no planogram)"),
        }
        self.open_door(open.request_id).await;
        self.hold(hold).await;
        let applied = self.state().stock.as_mut().map(|s| s.apply(&script));
        if let Some(applied) = &applied {
            if !applied.ignored.is_empty() {
                tracing::warn!(ignored = ?applied.ignored, "script lines matched nothing");
            }
            tracing::info!(taken = ?applied.taken, put_back = ?applied.put_back, "shopper done");
        }
        self.close_door().await;
        let after = self
            .state()
            .stock
            .as_mut()
            .map(|s| s.weigh(script.faulty_shelf, script.unstable_shelf));
        if let Some(shelves) = after {
            if let Err(e) = self
                .device
                .weights(session_id, WeighingPhase::After, shelves)
                .await
            {
                tracing::warn!(error = %e, "closing weights not delivered");
            }
        }
    }
}

async fn cabinet(
    client: async_nats::Client,
    device: SimDevice,
    mut faulty: bool,
    config: SimConfig,
    shutdown: CancellationToken,
) {
    let id = device.id.to_string();
    let (mut commands, mut control) = match (
        device
            .client()
            .subscribe(subjects::device_commands_all(&id))
            .await,
        client.subscribe(subjects::sim_controls_all(&id)).await,
    ) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot subscribe");
            return;
        }
    };
    let heartbeat = config.heartbeat;
    let holders = match HolderTable::open(config.state_dir.as_deref(), device.id) {
        Ok(t) => t,
        Err(e) => {
            // Starting empty would overwrite what the locker acknowledged: refuse instead.
            tracing::error!(error = %e, "holder table unreadable; not simulated");
            return;
        }
    };
    let cab = Arc::new(Cabinet {
        client,
        device,
        config,
        state: Mutex::new(State {
            holders,
            ..State::default()
        }),
        door: tokio::sync::Mutex::new(()),
        shutdown: shutdown.clone(),
    });
    cab.refresh_planogram().await;
    let started = tokio::time::Instant::now();
    // The first door report is what makes the cabinet usable; a busy or just-started
    // JetStream may not take it at once, so keep offering it until it is acknowledged.
    let mut wait = Duration::from_millis(200);
    while let Err(e) = cab.device.door(false, None).await {
        tracing::warn!(error = %e, "initial door state not delivered; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    if faulty {
        let _ = cab.device.fault(true, "simulated").await;
    }
    let mut openings = tokio::task::JoinSet::new();
    let mut recent: VecDeque<Uuid> = VecDeque::with_capacity(RECENT_REQUESTS);
    let mut beat = tokio::time::interval(heartbeat);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = beat.tick() => {
                if let Err(e) = cab.device.heartbeat(started.elapsed().as_secs()).await {
                    tracing::warn!(error = %e, "heartbeat not delivered");
                }
            }
            Some(msg) = control.next() => cab.control(msg, &mut faulty).await,
            Some(msg) = commands.next() => {
                if msg.subject.as_str() == subjects::device_holder(&id) {
                    cab.holder(&msg).await;
                    continue;
                }
                if !msg.subject.ends_with(".open") {
                    tracing::warn!(subject = %msg.subject, "unknown command ignored");
                    continue;
                }
                let open = match serde_json::from_slice::<OpenCommand>(&msg.payload) {
                    Ok(open) => open,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable command ignored");
                        continue;
                    }
                };
                if recent.contains(&open.request_id) {
                    tracing::info!(request_id = %open.request_id, "repeated open command ignored");
                    continue;
                }
                if recent.len() == RECENT_REQUESTS {
                    recent.pop_front();
                }
                recent.push_back(open.request_id);
                if faulty {
                    tracing::info!(request_id = %open.request_id, "faulty: refusing to open");
                    let _ = cab.device.refuse(open.request_id, "device fault").await;
                    continue;
                }
                let span = tracing::info_span!(
                    "opening",
                    request_id = %open.request_id,
                    session_id = open.session_id.map(|s| s.to_string()),
                );
                openings.spawn(cab.clone().opening(open).instrument(span));
            }
            Some(done) = openings.join_next() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "opening task failed");
                }
            }
        }
    }
    // Openings under way close their doors at once and report.
    while let Some(done) = openings.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "opening task failed");
        }
    }
}
