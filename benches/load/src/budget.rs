//! The harness's descriptor budget: how many sockets to the servers fit in its open-files
//! limit, and the plan sized down to it (with a note for each scenario it shrank).
//!
//! Each socket the harness opens to a server costs it one descriptor, and with
//! `--servers N` (N > 1) three: its own end, and the two ends of the round-robin forwarder
//! (the client side it accepted and the server side it connected), all in the harness's
//! process. A scenario that asked for more than fits would run the process out of
//! descriptors halfway through: sized down, it measures fewer sockets and says so.

use anyhow::bail;

use crate::scenarios::{Plan, Scenario};

/// Descriptors kept for everything but the scenarios' sockets: the runtime, standard
/// streams, the database pool of the seeding, the servers' pipes, the forwarder's
/// listener, the slow model's listener.
pub const RESERVE: u64 = 256;

/// Connections the slow model of `slow-ai` holds at most: one per AI call in flight, at
/// the server's default `ai_concurrency`.
const MODEL_CONNECTIONS: usize = 64;

/// Descriptors the harness holds for each socket it opens to the servers: its own end,
/// and behind the forwarder (`servers > 1`) the forwarder's two ends too.
pub fn per_socket(servers: u8) -> u64 {
    if servers > 1 { 3 } else { 1 }
}

/// How many sockets to the servers fit in `open_files` descriptors with `servers` servers,
/// once the reserve is set aside.
pub fn sockets(open_files: u64, servers: u8) -> usize {
    let room = open_files.saturating_sub(RESERVE) / per_socket(servers);
    usize::try_from(room).unwrap_or(usize::MAX)
}

/// Sizes `plan` down to the budget: `ws-idle`'s sockets, `ws-fanout`'s sockets per session
/// and `slow-ai`'s turns (which go straight to a server of its own, one descriptor each,
/// beside the connections and the slow model's). Answers a note for each scenario it
/// shrank; refuses a plan whose load connections or `ws-fanout` sessions (one socket each
/// at least) do not fit at all.
pub fn fit(
    plan: &mut Plan,
    open_files: u64,
    servers: u8,
    scenarios: &[Scenario],
) -> anyhow::Result<Vec<(Scenario, String)>> {
    let room = sockets(open_files, servers);
    let why = |asked: usize, kept: usize, per: u64| {
        format!(
            "{kept} sockets, not {asked}: the harness's open-files limit ({open_files}, less {RESERVE} kept for the rest) holds {per} descriptor(s) per socket{}",
            if per > 1 {
                " (its own end, and the forwarder's two ends in front of the servers)"
            } else {
                ""
            }
        )
    };
    let mut notes = Vec::new();
    let through_forwarder = [
        Scenario::Health,
        Scenario::Login,
        Scenario::SessionsList,
        Scenario::SessionDetail,
        Scenario::PostMessage,
        Scenario::LoginFlood,
        Scenario::Mixed,
    ];
    if plan.connections > room && scenarios.iter().any(|s| through_forwarder.contains(s)) {
        bail!(
            "--connections {} does not fit: the harness's open-files limit ({open_files}, less {RESERVE}) holds {room} sockets at {} descriptor(s) each",
            plan.connections,
            per_socket(servers)
        );
    }
    if plan.idle_sockets > room {
        notes.push((
            Scenario::WsIdle,
            format!(
                "ws-idle: {}",
                why(plan.idle_sockets, room, per_socket(servers))
            ),
        ));
        plan.idle_sockets = room;
    }
    let fanout = plan.fanout_sessions * plan.fanout_per_session;
    if fanout > room {
        if plan.fanout_sessions > room && scenarios.contains(&Scenario::WsFanout) {
            bail!(
                "ws-fanout needs a socket on each of its {} sessions: the harness's open-files limit ({open_files}, less {RESERVE}) holds {room}",
                plan.fanout_sessions
            );
        }
        plan.fanout_per_session = (room / plan.fanout_sessions.max(1)).max(1);
        let kept = plan.fanout_sessions * plan.fanout_per_session;
        notes.push((
            Scenario::WsFanout,
            format!(
                "ws-fanout: {} per session; {}",
                plan.fanout_per_session,
                why(fanout, kept, per_socket(servers))
            ),
        ));
    }
    // `slow-ai` runs on a server of its own, not behind the forwarder: one descriptor per
    // socket, and one per connection of its server to the slow model.
    let direct = sockets(open_files, 1);
    let slow_room = direct.saturating_sub(plan.connections + MODEL_CONNECTIONS);
    if plan.slow_ai.turns > slow_room {
        notes.push((
            Scenario::SlowAi,
            format!(
                "slow-ai: {slow_room} turns, not {}: the harness's open-files limit ({open_files}, less {RESERVE} kept for the rest) holds one poster per turn beside the {} connections and up to {MODEL_CONNECTIONS} of the slow model",
                plan.slow_ai.turns, plan.connections
            ),
        ));
        plan.slow_ai.turns = slow_room.max(1);
    }
    notes.retain(|(scenario, _)| scenarios.contains(scenario));
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::client::Timing;
    use crate::slow_ai::SlowAiPlan;

    fn full_plan() -> Plan {
        Plan {
            connections: 32,
            timing: Timing {
                warmup: Duration::ZERO,
                duration: Duration::from_secs(1),
            },
            roundtrip_messages: 1_000,
            fanout_sessions: 100,
            fanout_per_session: 10,
            fanout_rate: 500,
            idle_sockets: 10_000,
            idle_hold: Duration::from_secs(2),
            slow_ai: SlowAiPlan {
                turns: 1_024,
                reply_delay: Duration::from_secs(2),
            },
        }
    }

    const ALL: [Scenario; 3] = [Scenario::WsIdle, Scenario::WsFanout, Scenario::SlowAi];

    #[test]
    fn one_server_costs_one_descriptor_per_socket() {
        assert_eq!(sockets(20_000, 1), 20_000 - 256);
        assert_eq!(sockets(10_256, 1), 10_000);
        assert_eq!(sockets(100, 1), 0);
        assert_eq!(sockets(0, 1), 0);
    }

    #[test]
    fn behind_the_forwarder_a_socket_costs_three() {
        for servers in [2, 3, 8] {
            assert_eq!(sockets(20_000, servers), (20_000 - 256) / 3);
            assert_eq!(sockets(30_256, servers), 10_000);
            assert_eq!(sockets(30_255, servers), 9_999);
        }
    }

    #[test]
    fn ws_idle_is_sized_to_the_forwarders_budget_and_says_why() {
        let mut plan = full_plan();
        let notes = fit(&mut plan, 20_000, 2, &ALL).unwrap();
        assert_eq!(plan.idle_sockets, 6_581);
        let idle = notes
            .iter()
            .find(|(scenario, _)| *scenario == Scenario::WsIdle)
            .unwrap();
        assert!(idle.1.contains("6581 sockets, not 10000"), "{}", idle.1);
        assert!(idle.1.contains("forwarder"), "{}", idle.1);
        // The other scenarios fit: 1,000 fan-out sockets at 3 each, 1,024 turns direct.
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(plan.fanout_per_session, 10);
        assert_eq!(plan.slow_ai.turns, 1_024);

        let mut one = full_plan();
        assert!(fit(&mut one, 20_000, 1, &ALL).unwrap().is_empty());
        assert_eq!(one.idle_sockets, 10_000);
    }

    #[test]
    fn a_small_limit_shrinks_fanout_and_slow_ai_too() {
        let mut plan = full_plan();
        // 1,024 - 256 = 768: 256 sockets behind the forwarder, 768 direct.
        let notes = fit(&mut plan, 1_024, 2, &ALL).unwrap();
        assert_eq!(plan.idle_sockets, 256);
        assert_eq!(plan.fanout_per_session, 2);
        assert_eq!(plan.slow_ai.turns, 768 - 32 - 64);
        assert_eq!(notes.len(), 3, "{notes:?}");
        // Only the selected scenarios are noted (the plan is sized all the same).
        let mut plan = full_plan();
        let notes = fit(&mut plan, 1_024, 2, &[Scenario::WsIdle]).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    #[test]
    fn what_cannot_fit_at_all_is_refused() {
        let mut plan = full_plan();
        // 300 - 256 = 44 descriptors: 14 sockets behind the forwarder.
        assert!(fit(&mut plan, 300, 2, &[Scenario::Health]).is_err());
        assert!(fit(&mut full_plan(), 300, 2, &[Scenario::WsFanout]).is_err());
        // ws-idle alone still runs, on fewer sockets.
        let mut idle = full_plan();
        fit(&mut idle, 300, 2, &[Scenario::WsIdle]).unwrap();
        assert_eq!(idle.idle_sockets, 14);
    }
}
