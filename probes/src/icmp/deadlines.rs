//! When each round must next be looked at (its next send or its end), soonest first.
//!
//! Most deadlines are "when this echo left, plus a fixed delay" (the round's spacing, or its
//! timeout after the last echo). Echoes leave in deadline order, so for one delay these come in
//! time order: each delay gets a FIFO lane, and pushing and popping are O(1) with no heap to
//! sift. At 10,000 targets the heap's `pop` (fourteen levels of a 240 KB array) was half of the
//! ICMP loop's own time. Anything else (a round's start, a stop, an echo put back, an entry that
//! would land before its lane's last) goes to a heap. The soonest is the least of the lanes'
//! fronts and the heap's top.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// (when, slot, generation).
pub(super) type Deadline = (Instant, u32, u32);

/// Lanes kept at most: one per distinct spacing or timeout in use (a reload may bring others;
/// an empty lane makes room for a new delay, and past this many a deadline goes to the heap).
const MAX_LANES: usize = 16;

#[derive(Debug, Default)]
pub(super) struct Deadlines {
    lanes: Vec<(Duration, VecDeque<Deadline>)>,
    heap: BinaryHeap<Reverse<Deadline>>,
}

impl Deadlines {
    /// Add a deadline; `delay`: the fixed delay it is "a send time plus" (its lane), if any.
    pub fn push(&mut self, deadline: Deadline, delay: Option<Duration>) {
        if let Some(delay) = delay
            && let Some(lane) = self.lane(delay)
            && lane.back().is_none_or(|last| *last <= deadline)
        {
            lane.push_back(deadline);
            return;
        }
        self.heap.push(Reverse(deadline));
    }

    /// The lane of `delay`, made if there is room.
    fn lane(&mut self, delay: Duration) -> Option<&mut VecDeque<Deadline>> {
        let index = match self.lanes.iter().position(|(d, _)| *d == delay) {
            Some(index) => index,
            None => {
                if self.lanes.len() >= MAX_LANES {
                    let empty = self.lanes.iter().position(|(_, lane)| lane.is_empty())?;
                    self.lanes.swap_remove(empty);
                }
                self.lanes.push((delay, VecDeque::new()));
                self.lanes.len() - 1
            }
        };
        Some(&mut self.lanes[index].1)
    }

    /// The soonest deadline.
    pub fn peek(&self) -> Option<Deadline> {
        let heap = self.heap.peek().map(|Reverse(d)| *d);
        self.lanes
            .iter()
            .filter_map(|(_, lane)| lane.front().copied())
            .chain(heap)
            .min()
    }

    /// Take the soonest deadline.
    pub fn pop(&mut self) -> Option<Deadline> {
        let soonest = self.peek()?;
        if self.heap.peek().is_some_and(|Reverse(d)| *d == soonest) {
            return self.heap.pop().map(|Reverse(d)| d);
        }
        self.lanes
            .iter_mut()
            .find(|(_, lane)| lane.front() == Some(&soonest))
            .and_then(|(_, lane)| lane.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever order and lanes they come in, deadlines come out soonest first: the same
    /// sequence a plain heap gives.
    #[test]
    fn deadlines_come_out_in_time_order_like_a_heap() {
        let origin = Instant::now();
        let mut deadlines = Deadlines::default();
        let mut reference = BinaryHeap::new();
        // A small linear congruential generator: the same pseudo-random pushes and pops each run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        let mut now = Duration::ZERO;
        let mut popped = Vec::new();
        let mut expected = Vec::new();
        for step in 0..20_000_u32 {
            if next() % 3 == 0 {
                if let Some(d) = deadlines.pop() {
                    popped.push(d);
                    expected.push(reference.pop().map(|Reverse(d)| d).expect("same size"));
                    now = now.max(d.0 - origin);
                }
                continue;
            }
            // Most deadlines are now + one of a few delays (in order within a lane); some go
            // anywhere, some land before their lane's last, and there are more delays than lanes.
            let delay = Duration::from_millis(next() % 20 + 1);
            let (at, lane) = match next() % 10 {
                0 => (now + Duration::from_micros(next() % 5_000), None),
                1 => (
                    now + delay - Duration::from_micros(next() % 900),
                    Some(delay),
                ),
                _ => (now + delay, Some(delay)),
            };
            let deadline = (origin + at, step, (next() % 4) as u32);
            deadlines.push(deadline, lane);
            reference.push(Reverse(deadline));
            assert_eq!(
                deadlines.peek(),
                reference.peek().map(|Reverse(d)| *d),
                "step {step}"
            );
        }
        while let Some(d) = deadlines.pop() {
            popped.push(d);
            expected.push(reference.pop().map(|Reverse(d)| d).expect("same size"));
        }
        assert!(reference.is_empty(), "{} left behind", reference.len());
        assert_eq!(popped, expected);
        assert!(popped.len() > 10_000, "{}", popped.len());
    }
}
