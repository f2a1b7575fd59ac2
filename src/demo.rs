//! `rowcast demo`: the demo schema (`sql/demo.sql`) and a writer that plays realistic
//! attendance, booking and course activity through plain SQL, the way an app would.
//! It never calls rowcast: every event the dashboard shows comes from the triggers.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::db::{self, DbError};

/// The demo schema and its `watch` registrations.
pub(crate) const DEMO_SQL: &str = include_str!("../sql/demo.sql");

/// Loads the demo schema (idempotent).
pub async fn load(client: &Client) -> Result<(), DbError> {
    client.batch_execute(DEMO_SQL).await?;
    Ok(())
}

/// A small deterministic generator (xorshift), enough for pacing and choices.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Writes demo activity, one statement every `pace` or so, until `shutdown`;
/// reconnects on errors. Several players with different `seed`s interleave.
pub async fn play(url: String, pace: Duration, seed: u64, shutdown: CancellationToken) {
    let mut dice = Dice(0x2545_F491_4F6C_DD1D ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    while !shutdown.is_cancelled() {
        let client = match connect(&url).await {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(error = %err, "demo writer cannot connect; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let step = Writer {
            client: &client,
            pace,
            shutdown: &shutdown,
        };
        let result = match dice.below(3) {
            0 => step.booking(&mut dice).await,
            1 => step.meeting(&mut dice).await,
            _ => step.course(&mut dice).await,
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "demo write failed");
        }
    }
}

async fn connect(url: &str) -> Result<Client, DbError> {
    let (client, connection) = db::pg_config(url)?.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

struct Writer<'a> {
    client: &'a Client,
    pace: Duration,
    shutdown: &'a CancellationToken,
}

impl Writer<'_> {
    /// Runs one statement after a pause; returns the first column of the first row, if any.
    async fn sql(
        &self,
        dice: &mut Dice,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<i64>, DbError> {
        let jitter = self.pace.as_millis() as u64;
        let pause = Duration::from_millis(jitter / 2 + dice.below(jitter.max(1)));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.shutdown.cancelled() => return Ok(None),
        }
        let rows = self.client.query(sql, params).await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn booking(&self, dice: &mut Dice) -> Result<(), DbError> {
        let client_id = 1 + dice.below(20) as i64;
        let provider_id = 100 + dice.below(8) as i64;
        let price = 40 + dice.below(80) as i32;
        let Some(id) = self
            .sql(
                dice,
                "insert into bookings (client_id, provider_id, starts_at, ends_at, price, card_token) \
                 values ($1, $2, now() + interval '1 day', now() + interval '1 day 1 hour', $3::int, 'tok_demo') returning id",
                &[&client_id, &provider_id, &price],
            )
            .await?
        else {
            return Ok(());
        };
        if dice.chance(20) {
            self.sql(
                dice,
                "update bookings set status = 'REJECTED', updated_at = now() where id = $1",
                &[&id],
            )
            .await?;
            return Ok(());
        }
        self.sql(
            dice,
            "update bookings set status = 'CONFIRMED', updated_at = now() where id = $1",
            &[&id],
        )
        .await?;
        let Some(payment) = self
            .sql(
                dice,
                "insert into payments (booking_id, client_id, provider_id, amount) \
                 select id, client_id, provider_id, price from bookings where id = $1 returning id",
                &[&id],
            )
            .await?
        else {
            return Ok(());
        };
        for status in ["ESCROW", "RELEASED"] {
            self.sql(
                dice,
                "update payments set status = $2, updated_at = now() where id = $1",
                &[&payment, &status],
            )
            .await?;
        }
        let Some(payout) = self
            .sql(
                dice,
                "insert into payouts (provider_id, payment_id, amount) \
                 select provider_id, id, amount * 0.9 from payments where id = $1 returning id",
                &[&payment],
            )
            .await?
        else {
            return Ok(());
        };
        let last = if dice.chance(10) {
            "FAILED"
        } else {
            "COMPLETED"
        };
        for status in ["PROCESSING", last] {
            self.sql(
                dice,
                "update payouts set status = $2, updated_at = now() where id = $1",
                &[&payout, &status],
            )
            .await?;
        }
        self.sql(
            dice,
            "update bookings set status = 'COMPLETED', updated_at = now() where id = $1",
            &[&id],
        )
        .await?;
        Ok(())
    }

    async fn meeting(&self, dice: &mut Dice) -> Result<(), DbError> {
        let rep = 200 + dice.below(4) as i64;
        let title = format!("Group session {}", 1 + dice.below(50));
        let organization = 300 + dice.below(3) as i64;
        let Some(id) = self
            .sql(
                dice,
                "insert into meetings (title, court_rep_id, organization_id, scheduled_at) \
                 values ($1, $2, $3, now()) returning id",
                &[&title, &rep, &organization],
            )
            .await?
        else {
            return Ok(());
        };
        self.sql(
            dice,
            "update meetings set started_at = now() where id = $1",
            &[&id],
        )
        .await?;
        let mut seats = Vec::new();
        for _ in 0..2 + dice.below(3) {
            let participant = 1 + dice.below(20) as i64;
            if let Some(seat) = self
                .sql(
                    dice,
                    "insert into attendance (meeting_id, participant_id) values ($1, $2) returning id",
                    &[&id, &participant],
                )
                .await?
            {
                seats.push((seat, participant));
            }
        }
        for (seat, _) in &seats {
            self.sql(
                dice,
                "update attendance set left_at = now(), status = 'LEFT', \
                 minutes = greatest(1, extract(epoch from now() - joined_at)::int / 60) where id = $1",
                &[seat],
            )
            .await?;
        }
        self.sql(
            dice,
            "update meetings set ended_at = now() where id = $1",
            &[&id],
        )
        .await?;
        for (_, participant) in seats.iter().take(2) {
            self.sql(
                dice,
                "insert into court_cards (meeting_id, participant_id, court_rep_id) values ($1, $2, $3) returning id",
                &[&id, participant, &rep],
            )
            .await?;
        }
        Ok(())
    }

    async fn course(&self, dice: &mut Dice) -> Result<(), DbError> {
        let organization = 300 + dice.below(3) as i64;
        let title = [
            "Intro to SQL",
            "Advanced Rust",
            "Data modelling",
            "Incident response",
        ][dice.below(4) as usize];
        let requested_by = 1 + dice.below(20) as i64;
        let instructor = 400 + dice.below(5) as i64;
        let Some(id) = self
            .sql(
                dice,
                "insert into courses (organization_id, title, requested_by) values ($1, $2, $3) returning id",
                &[&organization, &title, &requested_by],
            )
            .await?
        else {
            return Ok(());
        };
        if dice.chance(15) {
            self.sql(
                dice,
                "update courses set status = 'CANCELLED', updated_at = now() where id = $1",
                &[&id],
            )
            .await?;
            return Ok(());
        }
        self.sql(
            dice,
            "update courses set instructor_id = $2, status = 'ASSIGNED', updated_at = now() where id = $1",
            &[&id, &instructor],
        )
        .await?;
        self.sql(
            dice,
            "update courses set scheduled_for = now() + interval '3 days', status = 'SCHEDULED', updated_at = now() where id = $1",
            &[&id],
        )
        .await?;
        if dice.chance(30) {
            self.sql(
                dice,
                "update courses set scheduled_for = scheduled_for + interval '1 day', updated_at = now() where id = $1",
                &[&id],
            )
            .await?;
        }
        self.sql(
            dice,
            "update courses set status = 'COMPLETED', updated_at = now() where id = $1",
            &[&id],
        )
        .await?;
        Ok(())
    }
}
