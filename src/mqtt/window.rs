//! The PUBACK window of one connection: which outbox row each packet id stands for, and how
//! many results are still unacknowledged.
//!
//! rumqttc gives no packet id when a publish is requested; it reports `Outgoing::Publish(pkid)`
//! later, in the order the publishes were requested. So every publish handed to rumqttc is
//! queued here (outbox rows with their `seq`, status, discovery and replies as `None`), and each
//! `Outgoing::Publish` takes the oldest. Plain data, no I/O: the matching is tested without a
//! broker. A fresh window goes with every connection (clean session; see the module comment).

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Default)]
pub struct PubackWindow {
    /// Handed to rumqttc, no packet id yet, oldest first; `Some(seq)` for outbox rows.
    requested: VecDeque<Option<i64>>,
    /// Sent, waiting for the PUBACK: packet id to outbox `seq`.
    inflight: HashMap<u16, i64>,
    /// The newest outbox row handed over on this connection: the next ones come after it.
    last_sent: i64,
}

impl PubackWindow {
    /// A publish was handed to rumqttc: `Some(seq)` for an outbox row, `None` for the others.
    pub fn requested(&mut self, seq: Option<i64>) {
        self.requested.push_back(seq);
        if let Some(seq) = seq {
            self.last_sent = seq;
        }
    }

    /// rumqttc sent the oldest requested publish with this packet id.
    pub fn on_outgoing(&mut self, pkid: u16) {
        if let Some(Some(seq)) = self.requested.pop_front() {
            // rumqttc holds a publish back rather than reuse an id still unacknowledged.
            self.inflight.insert(pkid, seq);
        }
    }

    /// The outbox row this PUBACK acknowledges; `None` for the others (status, discovery,
    /// replies) and for ids we never sent.
    pub fn on_puback(&mut self, pkid: u16) -> Option<i64> {
        self.inflight.remove(&pkid)
    }

    /// Outbox rows handed to rumqttc and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.requested.iter().flatten().count() + self.inflight.len()
    }

    /// How many more outbox rows fit in a window of `window`.
    pub fn room(&self, window: usize) -> usize {
        window.saturating_sub(self.outstanding())
    }

    pub fn last_sent(&self) -> i64 {
        self.last_sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_match_rows_through_request_order_past_other_publishes() {
        let mut w = PubackWindow::default();
        w.requested(None); // status
        w.requested(Some(7));
        w.requested(None); // a command reply
        w.requested(Some(8));
        for pkid in 1..=4 {
            w.on_outgoing(pkid);
        }
        assert_eq!(w.on_puback(1), None);
        assert_eq!(w.on_puback(4), Some(8));
        assert_eq!(w.on_puback(3), None);
        assert_eq!(w.on_puback(2), Some(7));
        assert_eq!(w.outstanding(), 0);
        assert_eq!(w.last_sent(), 8);
    }

    #[test]
    fn a_puback_for_an_unknown_pkid_changes_nothing() {
        let mut w = PubackWindow::default();
        w.requested(Some(1));
        w.on_outgoing(5);
        assert_eq!(w.on_puback(6), None);
        assert_eq!(w.outstanding(), 1);
        assert_eq!(w.on_puback(5), Some(1));
        assert_eq!(w.on_puback(5), None, "acknowledged once only");
    }

    #[test]
    fn a_pkid_is_reused_after_its_ack() {
        let mut w = PubackWindow::default();
        w.requested(Some(1));
        w.on_outgoing(1);
        assert_eq!(w.on_puback(1), Some(1));
        w.requested(Some(2));
        w.on_outgoing(1);
        assert_eq!(w.on_puback(1), Some(2));
        assert_eq!(w.last_sent(), 2);
    }

    #[test]
    fn outstanding_counts_outbox_rows_requested_or_in_flight() {
        let mut w = PubackWindow::default();
        assert_eq!((w.outstanding(), w.last_sent()), (0, 0));
        w.requested(None);
        assert_eq!(w.outstanding(), 0);
        w.requested(Some(3));
        w.requested(Some(4));
        assert_eq!(w.outstanding(), 2);
        w.on_outgoing(1); // the status
        w.on_outgoing(2); // row 3
        assert_eq!(w.outstanding(), 2, "one requested, one in flight");
        w.on_puback(2);
        assert_eq!(w.outstanding(), 1);
        w.on_outgoing(3); // row 4
        assert_eq!(w.outstanding(), 1);
        // An outgoing publish with nothing requested (not one of ours) is ignored.
        w.on_outgoing(4);
        assert_eq!(w.outstanding(), 1);
    }

    #[test]
    fn room_is_what_the_window_has_left() {
        let mut w = PubackWindow::default();
        assert_eq!(w.room(3), 3);
        w.requested(None);
        assert_eq!(w.room(3), 3, "non-outbox publishes take no room");
        w.requested(Some(1));
        w.requested(Some(2));
        assert_eq!(w.room(3), 1);
        w.requested(Some(3));
        assert_eq!(w.room(3), 0);
        assert_eq!(w.room(2), 0, "never negative when the window shrinks");
        assert_eq!(w.room(0), 0);
    }
}
