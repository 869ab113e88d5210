//! A site, compartments, users and reservations, over `latch serve`'s API.

use super::{Env, Error, LockersArgs, COURIER, DIRECT_SITE, SETUP_PARALLEL, WEBHOOK_SITE};
use futures::StreamExt;
use latch_api::auth::{issue_token, Role as TokenRole};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::{Duration, Instant};

pub(super) async fn post(env: &Env, path: &str, token: &str, body: Value) -> Result<Value, String> {
    let res = env
        .http
        .post(format!("{}{path}", env.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{path}: {status} {body}"))
    }
}

pub(super) fn user_number(i: usize) -> String {
    format!("139{:08}", i + 1)
}

/// Holder i's pair partner is user holders + i; webhook requesters are the first holders.
pub(super) async fn setup(env: &Env, args: &LockersArgs) -> Result<Vec<String>, Error> {
    let op = &env.operator;
    for (site, name) in [(DIRECT_SITE, "直接授权"), (WEBHOOK_SITE, "快递授权")] {
        post(
            env,
            "/lockers/sites",
            op,
            json!({"site": site, "name": name}),
        )
        .await?;
    }
    let installs = (0..args.holders)
        .map(|n| (DIRECT_SITE, n))
        .chain((0..args.grants).map(|n| (WEBHOOK_SITE, n)));
    futures::stream::iter(installs)
        .map(|(site, n)| {
            post(
                env,
                "/lockers/compartments",
                op,
                json!({"site": site, "number": format!("{n:04}"), "size": "large"}),
            )
        })
        .buffer_unordered(SETUP_PARALLEL * 4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let users: Vec<String> = (0..args.holders * 2)
        .map(user_number)
        .chain([COURIER.to_owned()])
        .collect();
    futures::stream::iter(&users)
        .map(|u| {
            post(
                env,
                "/lockers/users",
                op,
                json!({"user_number": u, "name": "测试用户", "password": "bench-password-1"}),
            )
        })
        .buffer_unordered(SETUP_PARALLEL)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let mut tokens = Vec::with_capacity(users.len());
    for u in &users {
        tokens.push(issue_token(&env.pool, TokenRole::User, &format!("locker:{u}")).await?);
    }
    // Reservations one at a time: each takes the first free compartment the read model shows,
    // and running them at once would mostly race for the same one.
    for (i, token) in tokens.iter().enumerate().take(args.holders) {
        reserve(env, token, DIRECT_SITE)
            .await
            .map_err(|e| format!("holder {i}: {e}"))?;
    }
    for n in 0..args.grants {
        reserve(env, &tokens[n % args.holders], WEBHOOK_SITE)
            .await
            .map_err(|e| format!("webhook compartment {n}: {e}"))?;
    }
    wait_reserved(&env.pool, args.holders + args.grants).await?;
    Ok(tokens)
}

/// Reserves a large compartment; the API picks among the first free ones the read model shows,
/// which can all be taken already when the projector is behind, so it waits and tries again.
async fn reserve(env: &Env, token: &str, site: &str) -> Result<Value, String> {
    let mut tries = 0;
    loop {
        match post(
            env,
            "/lockers/reservations",
            token,
            json!({"site": site, "size": "large"}),
        )
        .await
        {
            Err(e) if e.contains("no_free_compartment") && tries < 500 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

async fn wait_reserved(pool: &PgPool, want: usize) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM locker_compartments WHERE status = 'reserved'")
                .fetch_one(pool)
                .await?;
        if n as usize >= want {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("only {n} of {want} reservations projected in 120 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
