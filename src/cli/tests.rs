//! `arbiter tests list|results|pause|resume|stop`.

use super::Connection as Channel;
use serde_json::{json, Value};

use super::{time, CliError};
use crate::config::{CreateTestArgs, DriftArg, RewardArg, StrategyArg, TestsAction, TestsArgs};
use crate::pb::{self, experiments_client::ExperimentsClient};

fn status_name(raw: i32) -> &'static str {
    match pb::TestStatus::try_from(raw) {
        Ok(pb::TestStatus::Running) => "RUNNING",
        Ok(pb::TestStatus::Paused) => "PAUSED",
        Ok(pb::TestStatus::Completed) => "COMPLETED",
        Ok(pb::TestStatus::Cancelled) => "CANCELLED",
        _ => "UNKNOWN",
    }
}

fn test_json(t: &pb::Test) -> Value {
    let strategy = pb::AllocationStrategy::try_from(t.allocation_strategy)
        .map(|s| s.as_str_name().trim_start_matches("ALLOCATION_STRATEGY_"))
        .unwrap_or("UNKNOWN");
    let reward = pb::RewardModel::try_from(t.reward_model)
        .map(|r| r.as_str_name().trim_start_matches("REWARD_MODEL_"))
        .unwrap_or("UNKNOWN");
    let arms: Vec<Value> = t
        .arms
        .iter()
        .map(|a| json!({"arm_id": a.arm_id, "model_registry_id": a.model_registry_id, "weight": a.weight}))
        .collect();
    json!({"test_id": t.test_id, "name": t.name, "description": t.description, "status": status_name(t.status),
           "allocation_strategy": strategy, "reward_model": reward, "arms": arms,
           "control_arm": t.control_arm, "epsilon": t.epsilon, "ucb_exploration": t.ucb_exploration,
           "significance_level": t.significance_level, "minimum_sample_size": t.minimum_sample_size,
           "minimum_effect_size": t.minimum_effect_size, "early_stopping": t.early_stopping,
           "stop_loss_threshold": t.stop_loss_threshold, "max_duration_days": t.max_duration_days,
           "min_allocation_per_arm": t.min_allocation_per_arm,
           "max_allocation_per_arm": t.max_allocation_per_arm,
           "created_at": time(t.created_at.as_ref()), "created_by": t.created_by,
           "model_registry_ids": t.model_registry_ids, "winner": t.winner,
           "settlement_period_seconds": t.settlement_period_seconds,
           "on_drift": pb::DriftAction::try_from(t.on_drift)
               .map(|a| a.as_str_name().trim_start_matches("DRIFT_ACTION_"))
               .unwrap_or("UNKNOWN"),
           "stop_reason": t.stop_reason, "stopped_at": t.stopped_at.as_ref().map(|s| s.to_string())})
}

/// A test for people: one line per setting, the arms as a small table.
fn test_text(t: &pb::Test) -> String {
    // Arms and model ids: as a table below.
    let mut out = super::fields_text(&test_json(t), &["arms", "model_registry_ids"]);
    out.push_str("arms:\n");
    for a in &t.arms {
        out.push_str(&format!(
            "  {:<7} {:<40} weight {}\n",
            a.arm_id, a.model_registry_id, a.weight
        ));
    }
    out
}

fn results_json(r: &pb::TestResults) -> Value {
    let arms: Vec<Value> = r
        .arms
        .iter()
        .map(|a| {
            json!({"arm_id": a.arm_id, "model_registry_id": a.model_registry_id, "results": a.total_requests,
                   "allocations": a.allocations, "mean_return": a.mean_return, "std_return": a.std_return,
                   "confidence_interval": a.confidence_interval.as_ref().map(|c| [c.low, c.high]),
                   "sharpe_ratio": a.sharpe_ratio, "win_rate": a.win_rate, "allocation_weight": a.allocation_weight,
                   "probability_best": a.probability_best, "suspended": a.suspended,
                   "max_drawdown": a.max_drawdown, "sharpe_ci": a.sharpe_ci.as_ref().map(|c| [c.low, c.high]),
                   "backtest_sharpe": a.backtest_sharpe, "backtest_max_dd": a.backtest_max_dd,
                   "drift_detected": a.drift_detected, "drift_alarms": a.drift_alarms,
                   "first_drift_at": a.first_drift_at,
                   "last_drift_at": a.last_drift_at, "last_drift_direction": a.last_drift_direction,
                   "drift_statistic": a.drift_statistic})
        })
        .collect();
    let comparisons: Vec<Value> = r
        .comparisons
        .iter()
        .map(|c| {
            json!({"control_arm": c.control_arm, "treatment_arm": c.treatment_arm, "significant": c.significant,
                   "p_value": c.p_value, "always_valid_p_value": c.always_valid_p_value,
                   "adjusted_p_value": c.adjusted_p_value, "difference": c.difference, "leader": c.leader, "winner": c.winner})
        })
        .collect();
    json!({"test_id": r.test_id, "status": status_name(r.status), "total_requests": r.total_requests,
           "total_allocations": r.total_allocations, "winner": r.winner, "stop_reason": r.stop_reason,
           "srm_p_value": r.srm_p_value, "settled": r.settled,
           "settles_at": r.settles_at.as_ref().map(|t| t.to_string()),
           "decision": r.decision.as_ref().map(decision_json),
           "arms": arms, "comparisons": comparisons})
}

fn decision_json(d: &pb::StopDecision) -> Value {
    let arms: Vec<Value> = d
        .arms
        .iter()
        .map(|a| {
            json!({"arm_id": a.arm_id, "results": a.results, "mean_return": a.mean_return,
                        "std_return": a.std_return, "suspended": a.suspended})
        })
        .collect();
    let comparisons: Vec<Value> = d
        .comparisons
        .iter()
        .map(|c| {
            json!({"treatment_arm": c.treatment_arm, "control_arm": c.control_arm,
                        "difference": c.difference, "always_valid_p_value": c.always_valid_p_value,
                        "adjusted_p_value": c.adjusted_p_value, "significant": c.significant})
        })
        .collect();
    json!({"kind": d.kind, "reason": d.reason, "decided_at": time(d.decided_at.as_ref()),
           "winner": d.winner, "arms": arms, "comparisons": comparisons})
}

/// The aligned table of `tests results`: arm, model, n, mean ± CI half-width, Sharpe per result,
/// win rate, share, P(best), maximum drawdown; then one significance line per comparison and the
/// status. `test`, when known, gives the interval's level and when monitoring starts.
fn results_table(r: &pb::TestResults, test: Option<&pb::Test>) -> String {
    let level = test.map_or(String::new(), |t| {
        format!(" {:.0}%", (1.0 - t.significance_level) * 100.0)
    });
    let mut out = format!(
        "{:<7} {:<32} {:>8} {:>24} {:>9} {:>6} {:>6} {:>7} {:>9}\n",
        "arm",
        "model",
        "n",
        format!("mean ±{level} CI"),
        "Sharpe/r",
        "win",
        "share",
        "P(best)",
        "max DD"
    );
    for a in &r.arms {
        let mean = match &a.confidence_interval {
            Some(ci) => format!("{:+.5} ± {:.5}", a.mean_return, (ci.high - ci.low) / 2.0),
            None => format!("{:+.5}", a.mean_return),
        };
        out.push_str(&format!(
            "{:<7} {:<32} {:>8} {:>24} {:>9.3} {:>5.1}% {:>5.1}% {:>7.3} {:>9.5}{}{}\n",
            a.arm_id,
            a.model_registry_id,
            a.total_requests,
            mean,
            a.sharpe_ratio,
            a.win_rate * 100.0,
            a.allocation_weight * 100.0,
            a.probability_best.unwrap_or(0.0),
            a.max_drawdown,
            if a.suspended { "  suspended" } else { "" },
            if a.drift_detected {
                format!(
                    "  drift {} at result {}",
                    if a.last_drift_direction > 0 {
                        "up"
                    } else {
                        "down"
                    },
                    a.last_drift_at
                )
            } else {
                String::new()
            }
        ));
    }
    out.push_str(
        "Sharpe/r: mean over standard deviation of single results (not annualised); \
         max DD: largest fall of the cumulative return, in return units\n",
    );
    let fewest = r.arms.iter().map(|a| a.total_requests).min().unwrap_or(0);
    for c in &r.comparisons {
        let minimum = test.map_or(0, |t| t.minimum_sample_size);
        let sequential = if fewest < minimum {
            format!("always-valid p not monitored yet ({fewest} of {minimum} results per arm)")
        } else {
            format!(
                "always-valid p = {:.4}{}",
                c.always_valid_p_value,
                c.adjusted_p_value
                    .map(|p| format!(" (Holm {p:.4})"))
                    .unwrap_or_default()
            )
        };
        out.push_str(&format!(
            "{} vs {}: difference {:+.5}, Welch p = {:.4} (one look), {sequential} → {}{}\n",
            c.treatment_arm,
            c.control_arm,
            c.difference,
            c.p_value,
            if c.significant {
                "significant"
            } else {
                "not significant"
            },
            if c.leader.is_empty() {
                String::new()
            } else {
                format!(", leader {}", c.leader)
            }
        ));
    }
    out.push_str(&format!("status {}", status_name(r.status)));
    if !r.winner.is_empty() {
        out.push_str(&format!(", winner {}", r.winner));
    }
    if !r.stop_reason.is_empty() {
        out.push_str(&format!(", stopped: {}", r.stop_reason));
    }
    if let Some(p) = r.srm_p_value {
        out.push_str(&format!(", SRM p = {p:.4}"));
    }
    out.push('\n');
    out
}

fn create_request(a: &CreateTestArgs, created_by: String) -> pb::CreateTestRequest {
    pb::CreateTestRequest {
        test_id: a.id.clone(),
        name: a.name.clone(),
        description: a.description.clone(),
        created_by,
        model_registry_ids: a.models.clone(),
        weights: a.weights.clone(),
        allocation_strategy: match a.strategy {
            StrategyArg::Fixed => pb::AllocationStrategy::Fixed,
            StrategyArg::Thompson => pb::AllocationStrategy::ThompsonSampling,
            StrategyArg::Ucb => pb::AllocationStrategy::Ucb,
            StrategyArg::EpsilonGreedy => pb::AllocationStrategy::EpsilonGreedy,
        } as i32,
        reward_model: match a.reward {
            None => pb::RewardModel::Unspecified,
            Some(RewardArg::Bernoulli) => pb::RewardModel::Bernoulli,
            Some(RewardArg::Gaussian) => pb::RewardModel::Gaussian,
        } as i32,
        epsilon: a.epsilon,
        ucb_exploration: a.ucb_exploration,
        significance_level: a.significance_level,
        minimum_sample_size: a.minimum_sample_size,
        minimum_effect_size: a.minimum_effect_size,
        max_duration_days: a.max_duration_days,
        early_stopping: a.no_early_stopping.then_some(false),
        stop_loss_threshold: a.stop_loss_threshold,
        min_allocation_per_arm: a.min_allocation_per_arm,
        max_allocation_per_arm: a.max_allocation_per_arm,
        control_arm: a.control_arm.clone(),
        on_drift: match a.on_drift {
            None => pb::DriftAction::Unspecified,
            Some(DriftArg::Alert) => pb::DriftAction::Alert,
            Some(DriftArg::Suspend) => pb::DriftAction::Suspend,
        } as i32,
        settlement_period_seconds: a.settlement_period_secs,
    }
}

async fn get_test(
    client: &mut ExperimentsClient<Channel>,
    test_id: &str,
) -> Result<pb::Test, tonic::Status> {
    client
        .get_test(pb::GetTestRequest {
            test_id: test_id.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub(super) async fn run(args: &TestsArgs, channel: Channel) -> Result<String, CliError> {
    let mut client = ExperimentsClient::new(channel);
    let as_json = args.client.json;
    let show_test = |t: pb::Test| {
        if as_json {
            super::json(&test_json(&t))
        } else {
            format!(
                "{} {} ({})\n",
                t.test_id,
                status_name(t.status),
                t.model_registry_ids.join(", ")
            )
        }
    };
    match &args.action {
        TestsAction::Create(create) => Ok(show_test(
            client
                .create_test(create_request(create, args.client.actor(None)))
                .await?
                .into_inner(),
        )),
        TestsAction::Show { test_id } => {
            let test = get_test(&mut client, test_id).await?;
            Ok(if as_json {
                super::json(&test_json(&test))
            } else {
                test_text(&test)
            })
        }
        TestsAction::List => {
            // Pages keep each answer far below gRPC's default 4 MiB message limit.
            let mut tests = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_tests(pb::ListTestsRequest {
                        status: None,
                        page_size: 500,
                        page_token,
                    })
                    .await?
                    .into_inner();
                tests.extend(page.tests);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if as_json {
                return Ok(super::json(&Value::Array(
                    tests.iter().map(test_json).collect(),
                )));
            }
            let mut out = format!("{:<32} {:<10} {:<30} models\n", "test", "status", "created");
            for t in &tests {
                out.push_str(&format!(
                    "{:<32} {:<10} {:<30} {}\n",
                    t.test_id,
                    status_name(t.status),
                    time(t.created_at.as_ref()),
                    t.model_registry_ids.join(", ")
                ));
            }
            Ok(out)
        }
        TestsAction::Results { test_id } => {
            let request = pb::GetTestResultsRequest {
                test_id: test_id.clone(),
            };
            let results = client.get_test_results(request).await?.into_inner();
            Ok(if as_json {
                super::json(&results_json(&results))
            } else {
                let test = get_test(&mut client, test_id).await?;
                results_table(&results, Some(&test))
            })
        }
        TestsAction::Report { test_id, out } => {
            let results = client
                .get_test_results(pb::GetTestResultsRequest {
                    test_id: test_id.clone(),
                })
                .await?
                .into_inner();
            let history = client
                .get_test_history(pb::GetTestRequest {
                    test_id: test_id.clone(),
                })
                .await?
                .into_inner();
            let alpha = get_test(&mut client, test_id)
                .await
                .ok()
                .map(|t| t.significance_level);
            let svg = super::report::render(&results, &history, alpha);
            std::fs::write(out, svg).map_err(|source| CliError::File {
                path: out.display().to_string(),
                source,
            })?;
            Ok(if as_json {
                super::json(&json!({"test_id": test_id, "out": out.display().to_string()}))
            } else {
                format!("wrote {}\n", out.display())
            })
        }
        TestsAction::Pause { test_id } => {
            let request = pb::TestActionRequest {
                test_id: test_id.clone(),
                requested_by: args.client.actor(None),
                reason: String::new(),
            };
            Ok(show_test(client.pause_test(request).await?.into_inner()))
        }
        TestsAction::Resume { test_id } => {
            let request = pb::TestActionRequest {
                test_id: test_id.clone(),
                requested_by: args.client.actor(None),
                reason: String::new(),
            };
            Ok(show_test(client.resume_test(request).await?.into_inner()))
        }
        TestsAction::Stop { test_id, reason } => {
            let request = pb::StopTestRequest {
                test_id: test_id.clone(),
                reason: reason.clone(),
                requested_by: args.client.actor(None),
            };
            let results = client.stop_test(request).await?.into_inner();
            Ok(if as_json {
                super::json(&results_json(&results))
            } else {
                // The stop is done: a caller who may stop but not read gets the table without
                // the test's settings rather than an error.
                let test = get_test(&mut client, test_id).await.ok();
                results_table(&results, test.as_ref())
            })
        }
    }
}
