//! `GET /api/health/` (contract section 4). Keys are in name order, as the server has
//! always written this body.

use serde::Serialize;
use utoipa::ToSchema;

/// The server's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Always.
    Running,
}

/// The database's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseState {
    /// Reads and writes work.
    Connected,
    /// Reads work; a write failed for a database cause and none has succeeded since.
    ReadOnly,
    /// Reads fail too.
    Unavailable,
}

/// The AI service's state, from the last background probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AiState {
    /// Reachable (the built-in `template` AI always is).
    Available,
    /// Not reachable.
    Unavailable,
}

/// The search service's state, from the last background probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SearchState {
    /// Reachable.
    Available,
    /// Not reachable.
    Unavailable,
    /// No search service is configured.
    NotConfigured,
}

/// The overall state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Everything the server needs works.
    Healthy,
    /// The database answers reads but not writes (200).
    Degraded,
    /// The database cannot answer (503).
    Unhealthy,
}

/// The services' states.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct Services {
    /// The AI service.
    pub ai_service: AiState,
    /// The database.
    pub database: DatabaseState,
    /// The search service.
    pub search_service: SearchState,
    /// The server itself.
    pub server: ServerState,
}

/// `GET /api/health/`. AI and search reachability do not change `status`.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct Health {
    /// Each service's state.
    pub services: Services,
    /// The overall state.
    pub status: HealthStatus,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn health_has_the_contracts_keys_and_names() {
        let health = Health {
            status: HealthStatus::Degraded,
            services: Services {
                server: ServerState::Running,
                database: DatabaseState::ReadOnly,
                ai_service: AiState::Available,
                search_service: SearchState::NotConfigured,
            },
        };
        assert_eq!(
            serde_json::to_string(&health).unwrap(),
            json!({
                "status": "degraded",
                "services": {
                    "server": "running",
                    "database": "read_only",
                    "ai_service": "available",
                    "search_service": "not_configured",
                },
            })
            .to_string()
        );
    }
}
