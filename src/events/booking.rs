//! The booking domain: bookings, their payments and the providers' payouts.
//!
//! A [`Captured`] change of a table mapped as `booking`, `payment` or `payout` becomes a
//! [`BookingEvent`] through `TryFrom`. A booking's status change is named after what the
//! new status means (`booking.accepted` for CONFIRMED, ACCEPTED or APPROVED, ...); a
//! payment's (PAID → ESCROW → RELEASED, REFUNDED) and a payout's (PENDING → PROCESSING →
//! COMPLETED / FAILED) are `payment.status_changed` and `payout.status_changed`.
//!
//! The structs are `#[non_exhaustive]`: outside this crate they are only ever built by
//! the conversion, never by hand.

use crate::capture::log::Op;
use crate::events::fields::{Captured, Id, Status, StatusClass};
use crate::events::mapping::{Kind, MapError};

/// A booking, as the event sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Booking {
    /// The booking's id.
    pub id: Id,
    /// Its status (null in the row: `None`).
    pub status: Option<Status>,
    /// The client who booked, when the table has the field.
    pub client_id: Option<Id>,
    /// The provider booked, when the table has the field.
    pub provider_id: Option<Id>,
}

/// A payment of a booking.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Payment {
    /// The payment's id.
    pub id: Id,
    /// Its status: PAID, ESCROW, RELEASED, REFUNDED (or whatever the app writes).
    pub status: Option<Status>,
    /// The booking paid for.
    pub booking_id: Option<Id>,
    /// The client who paid.
    pub client_id: Option<Id>,
    /// The provider paid.
    pub provider_id: Option<Id>,
}

/// A payout to a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Payout {
    /// The payout's id.
    pub id: Id,
    /// Its status: PENDING, PROCESSING, COMPLETED, FAILED (or whatever the app writes).
    pub status: Option<Status>,
    /// The payment paid out.
    pub payment_id: Option<Id>,
    /// The provider paid.
    pub provider_id: Option<Id>,
}

/// A row whose status changed: the row after the change and the status before it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusChange<T> {
    /// The row after the change.
    pub row: T,
    /// The status before the change (`None`: it was null).
    pub previous: Option<Status>,
}

/// An event of the booking domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookingEvent {
    /// `booking.created`: a booking was inserted.
    BookingCreated(Booking),
    /// `booking.accepted`: the status became CONFIRMED, ACCEPTED or APPROVED.
    BookingAccepted(StatusChange<Booking>),
    /// `booking.rejected`: the status became REJECTED or DECLINED.
    BookingRejected(StatusChange<Booking>),
    /// `booking.cancelled`: the status became CANCELLED or CANCELED.
    BookingCancelled(StatusChange<Booking>),
    /// `booking.status_changed`: any other status change.
    BookingStatusChanged(StatusChange<Booking>),
    /// `booking.updated`: an update that left the status as it was.
    BookingUpdated(Booking),
    /// `booking.deleted`: a booking was deleted.
    BookingDeleted(Booking),
    /// `payment.created`: a payment was inserted.
    PaymentCreated(Payment),
    /// `payment.status_changed`: a payment's status changed.
    PaymentStatusChanged(StatusChange<Payment>),
    /// `payment.updated`: an update that left the status as it was.
    PaymentUpdated(Payment),
    /// `payment.deleted`: a payment was deleted.
    PaymentDeleted(Payment),
    /// `payout.created`: a payout was inserted.
    PayoutCreated(Payout),
    /// `payout.status_changed`: a payout's status changed.
    PayoutStatusChanged(StatusChange<Payout>),
    /// `payout.updated`: an update that left the status as it was.
    PayoutUpdated(Payout),
    /// `payout.deleted`: a payout was deleted.
    PayoutDeleted(Payout),
}

impl BookingEvent {
    /// Every event name of the domain.
    pub const NAMES: &'static [&'static str] = &[
        "booking.created",
        "booking.accepted",
        "booking.rejected",
        "booking.cancelled",
        "booking.status_changed",
        "booking.updated",
        "booking.deleted",
        "payment.created",
        "payment.status_changed",
        "payment.updated",
        "payment.deleted",
        "payout.created",
        "payout.status_changed",
        "payout.updated",
        "payout.deleted",
    ];

    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            BookingEvent::BookingCreated(_) => "booking.created",
            BookingEvent::BookingAccepted(_) => "booking.accepted",
            BookingEvent::BookingRejected(_) => "booking.rejected",
            BookingEvent::BookingCancelled(_) => "booking.cancelled",
            BookingEvent::BookingStatusChanged(_) => "booking.status_changed",
            BookingEvent::BookingUpdated(_) => "booking.updated",
            BookingEvent::BookingDeleted(_) => "booking.deleted",
            BookingEvent::PaymentCreated(_) => "payment.created",
            BookingEvent::PaymentStatusChanged(_) => "payment.status_changed",
            BookingEvent::PaymentUpdated(_) => "payment.updated",
            BookingEvent::PaymentDeleted(_) => "payment.deleted",
            BookingEvent::PayoutCreated(_) => "payout.created",
            BookingEvent::PayoutStatusChanged(_) => "payout.status_changed",
            BookingEvent::PayoutUpdated(_) => "payout.updated",
            BookingEvent::PayoutDeleted(_) => "payout.deleted",
        }
    }
}

fn booking(c: &Captured<'_>) -> Result<Booking, MapError> {
    Ok(Booking {
        id: c.row.id("id")?,
        status: c.row.status("status")?,
        client_id: c.row.opt_id("client_id")?,
        provider_id: c.row.opt_id("provider_id")?,
    })
}

fn payment(c: &Captured<'_>) -> Result<Payment, MapError> {
    Ok(Payment {
        id: c.row.id("id")?,
        status: c.row.status("status")?,
        booking_id: c.row.opt_id("booking_id")?,
        client_id: c.row.opt_id("client_id")?,
        provider_id: c.row.opt_id("provider_id")?,
    })
}

fn payout(c: &Captured<'_>) -> Result<Payout, MapError> {
    Ok(Payout {
        id: c.row.id("id")?,
        status: c.row.status("status")?,
        payment_id: c.row.opt_id("payment_id")?,
        provider_id: c.row.opt_id("provider_id")?,
    })
}

/// The event of a booking's update: named after what the new status means when it
/// means something else than the old one.
fn booking_update(c: &Captured<'_>, row: Booking) -> Result<BookingEvent, MapError> {
    let Some(previous) = c.status_change("status", row.status.as_ref())? else {
        return Ok(BookingEvent::BookingUpdated(row));
    };
    let class = |s: &Option<Status>| s.as_ref().map_or(StatusClass::Other, Status::class);
    let (now, before) = (class(&row.status), class(&previous));
    let change = StatusChange { row, previous };
    Ok(match now {
        _ if now == before => BookingEvent::BookingStatusChanged(change),
        StatusClass::Accepted => BookingEvent::BookingAccepted(change),
        StatusClass::Rejected => BookingEvent::BookingRejected(change),
        StatusClass::Cancelled => BookingEvent::BookingCancelled(change),
        StatusClass::Completed | StatusClass::Other => BookingEvent::BookingStatusChanged(change),
    })
}

impl TryFrom<&Captured<'_>> for BookingEvent {
    type Error = MapError;

    fn try_from(c: &Captured<'_>) -> Result<BookingEvent, MapError> {
        use BookingEvent as E;
        Ok(match (c.kind, c.op) {
            (Kind::Booking, Op::Insert) => E::BookingCreated(booking(c)?),
            (Kind::Booking, Op::Update) => booking_update(c, booking(c)?)?,
            (Kind::Booking, _) => E::BookingDeleted(booking(c)?),
            (Kind::Payment, Op::Insert) => E::PaymentCreated(payment(c)?),
            (Kind::Payment, Op::Update) => {
                let row = payment(c)?;
                match c.status_change("status", row.status.as_ref())? {
                    Some(previous) => E::PaymentStatusChanged(StatusChange { row, previous }),
                    None => E::PaymentUpdated(row),
                }
            }
            (Kind::Payment, _) => E::PaymentDeleted(payment(c)?),
            (Kind::Payout, Op::Insert) => E::PayoutCreated(payout(c)?),
            (Kind::Payout, Op::Update) => {
                let row = payout(c)?;
                match c.status_change("status", row.status.as_ref())? {
                    Some(previous) => E::PayoutStatusChanged(StatusChange { row, previous }),
                    None => E::PayoutUpdated(row),
                }
            }
            (Kind::Payout, _) => E::PayoutDeleted(payout(c)?),
            (kind, _) => return Err(MapError::OtherDomain(kind)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::events::testing::{named, typed};

    const ROW: &str = r#"{"id": 9007199254740993, "status": "%", "client_id": 7, "provider_id": 3, "price": 12345678901234567890.12}"#;

    fn row(status: &str) -> String {
        ROW.replace("\"%\"", status)
    }

    /// The event name of a booking-kind update from status `from` to `to` (JSON texts).
    fn update(kind: Kind, from: &str, to: &str) -> &'static str {
        let old = format!(r#"{{"status": {from}}}"#);
        named(kind, Op::Update, &row(to), Some(&old))
    }

    #[test]
    fn a_booking_insert_is_created_with_exact_ids() {
        let event = typed(Kind::Booking, Op::Insert, &row(r#""PENDING""#), None).unwrap();
        let Event::Booking(BookingEvent::BookingCreated(b)) = event else {
            panic!("{event:?}")
        };
        assert_eq!(b.id.as_json(), "9007199254740993");
        assert_eq!(b.status, Some(Status::new("PENDING")));
        assert_eq!(b.client_id.unwrap().as_json(), "7");
        assert_eq!(b.provider_id.unwrap().as_json(), "3");
    }

    #[test]
    fn booking_status_pairs_name_the_event() {
        let cases = [
            (r#""PENDING""#, r#""CONFIRMED""#, "booking.accepted"),
            (r#""PENDING""#, r#""accepted""#, "booking.accepted"),
            (r#""PENDING""#, r#""Approved""#, "booking.accepted"),
            (r#""PENDING""#, r#""REJECTED""#, "booking.rejected"),
            (r#""PENDING""#, r#""declined""#, "booking.rejected"),
            (r#""CONFIRMED""#, r#""CANCELLED""#, "booking.cancelled"),
            (r#""CONFIRMED""#, r#""canceled""#, "booking.cancelled"),
            (r#""CONFIRMED""#, r#""COMPLETED""#, "booking.status_changed"),
            (r#""CONFIRMED""#, r#""PENDING""#, "booking.status_changed"),
            (r#""PENDING""#, r#""ON_HOLD""#, "booking.status_changed"),
            (r#""CONFIRMED""#, r#""APPROVED""#, "booking.status_changed"),
            (r#""PENDING""#, "null", "booking.status_changed"),
            ("null", r#""PENDING""#, "booking.status_changed"),
            ("null", r#""CONFIRMED""#, "booking.accepted"),
            (r#""pending""#, r#""PENDING""#, "booking.updated"),
        ];
        for (from, to, name) in cases {
            assert_eq!(update(Kind::Booking, from, to), name, "{from} -> {to}");
        }
    }

    #[test]
    fn an_accepted_booking_carries_its_previous_status() {
        let event = typed(
            Kind::Booking,
            Op::Update,
            &row(r#""CONFIRMED""#),
            Some(r#"{"status": "PENDING"}"#),
        )
        .unwrap();
        let Event::Booking(BookingEvent::BookingAccepted(change)) = event else {
            panic!("{event:?}")
        };
        assert_eq!(change.previous, Some(Status::new("PENDING")));
        assert_eq!(change.row.status, Some(Status::new("CONFIRMED")));
    }

    #[test]
    fn booking_updates_without_a_status_change_and_deletes() {
        let r = row(r#""CONFIRMED""#);
        assert_eq!(
            named(Kind::Booking, Op::Update, &r, Some(r#"{"price": 10.00}"#)),
            "booking.updated"
        );
        assert_eq!(
            named(Kind::Booking, Op::Delete, &r, None),
            "booking.deleted"
        );
        // A NULL status and NULL parties are fine.
        let nulls = r#"{"id": 1, "status": null, "client_id": null}"#;
        assert_eq!(
            named(Kind::Booking, Op::Insert, nulls, None),
            "booking.created"
        );
    }

    #[test]
    fn payment_statuses_paid_escrow_released_refunded() {
        for (from, to) in [
            ("PAID", "ESCROW"),
            ("ESCROW", "RELEASED"),
            ("ESCROW", "REFUNDED"),
            ("PAID", "REFUNDED"),
            ("PAID", "SOMETHING_NEW"),
        ] {
            let name = update(Kind::Payment, &format!("\"{from}\""), &format!("\"{to}\""));
            assert_eq!(name, "payment.status_changed", "{from} -> {to}");
        }
        let event = typed(
            Kind::Payment,
            Op::Update,
            r#"{"id": 5, "status": "ESCROW", "booking_id": 9}"#,
            Some(r#"{"status": "PAID"}"#),
        )
        .unwrap();
        let Event::Booking(BookingEvent::PaymentStatusChanged(change)) = event else {
            panic!("{event:?}")
        };
        assert_eq!(change.previous, Some(Status::new("PAID")));
        assert_eq!(change.row.booking_id.unwrap().as_json(), "9");
        let paid = r#"{"id": 5, "status": "PAID"}"#;
        assert_eq!(
            named(Kind::Payment, Op::Insert, paid, None),
            "payment.created"
        );
        assert_eq!(
            named(Kind::Payment, Op::Update, paid, Some(r#"{"amount": 1}"#)),
            "payment.updated"
        );
        assert_eq!(
            named(Kind::Payment, Op::Delete, paid, None),
            "payment.deleted"
        );
    }

    #[test]
    fn payout_statuses_pending_processing_completed_failed() {
        for (from, to) in [
            ("PENDING", "PROCESSING"),
            ("PROCESSING", "COMPLETED"),
            ("PROCESSING", "FAILED"),
        ] {
            let name = update(Kind::Payout, &format!("\"{from}\""), &format!("\"{to}\""));
            assert_eq!(name, "payout.status_changed", "{from} -> {to}");
        }
        let p = r#"{"id": "po_1", "status": "PENDING", "provider_id": 3}"#;
        assert_eq!(named(Kind::Payout, Op::Insert, p, None), "payout.created");
        assert_eq!(
            named(Kind::Payout, Op::Update, p, Some(r#"{"amount": 1}"#)),
            "payout.updated"
        );
        assert_eq!(named(Kind::Payout, Op::Delete, p, None), "payout.deleted");
    }

    #[test]
    fn unreadable_booking_rows_are_errors_and_become_row_events() {
        let cases = [
            // the status column is not in the row (excluded)
            (r#"{"id": 1, "client_id": 7}"#, "Missing"),
            // a status that is not a string
            (r#"{"id": 1, "status": 3}"#, "WrongType"),
            // an id that is not a number or string
            (r#"{"id": true, "status": "PAID"}"#, "WrongType"),
            (r#"{"id": null, "status": "PAID"}"#, "NullId"),
            (
                r#"{"id": 1, "status": "PAID", "client_id": {"a": 1}}"#,
                "WrongType",
            ),
            (r#"[1, 2]"#, "NotAnObject"),
        ];
        for (data, what) in cases {
            let err = typed(Kind::Booking, Op::Insert, data, None).unwrap_err();
            assert!(format!("{err:?}").starts_with(what), "{data}: {err:?}");
            assert_eq!(named(Kind::Booking, Op::Insert, data, None), "row.inserted");
        }
        // An error names the field and column, never the value.
        let err = typed(Kind::Booking, Op::Insert, r#"{"id": 1, "status": 3}"#, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"field status (column "status") is not a JSON string"#
        );
    }
}
