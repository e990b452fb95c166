"""The suite's long tests, longest first, and the collection order that starts them first.

`scripts/test` hands the tests to its workers one at a time (`--dist load --maxschedchunk 1`) in collection order.
A long test that starts last keeps one worker busy after the others have finished; started first, it runs while
the others work through the many short tests. `tests/test_support.py` checks that every name here still exists.

Measured with `scripts/test --durations=40` (2 cores); put a test here when it takes more than about 4 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

#: `file::function` (every parametrisation of it), longest first. Seconds on an idle 2-core machine, roughly.
LONG_TESTS: tuple[str, ...] = (
    "test_crash.py::test_random_sigkills_while_draining_lose_nothing_and_duplicate_nothing",  # 110
    # 75 s: two instances on PostgreSQL, 20 SIGKILLs of the leader, each takeover about 2 s, each restart 2-3 s.
    "test_ha_failover_soak.py::test_twenty_leader_kills_lose_nothing_post_nothing_twice_and_take_over_within_the_lease",
    "test_cli_process.py::test_with_the_production_will_delay_a_dead_broadcaster_reads_offline_within_35_s",  # 31
    # 18 s
    "test_broker_urls.py::test_a_will_the_lost_broker_fires_later_through_a_bridge_does_not_leave_displays_offline",
    "test_broker_faults.py::test_a_black_holed_broker_link_heals_and_everything_queued_arrives",  # 17
    "test_hostile_answers_e2e.py::test_rate_limit_headers_at_and_past_their_extremes_never_stop_the_service",  # 13
    # 12 to 22 s: a lease of 3 s runs out, the standby takes over and delivers what the cut-off leader left.
    "test_ha_partition.py::test_a_leader_cut_off_from_the_database_stops_sending_before_its_lease_passes_to_the_standby",
    # 10 to 18 s and 5 to 17 s: a three-node NATS cluster's start, a node's SIGKILL and JetStream's re-election.
    "test_broker_nats_cluster.py::test_the_broadcaster_fails_over_from_a_killed_nats_node_and_every_node_serves_all",
    "test_broker_nats_cluster.py::test_a_display_on_a_killed_nats_node_shows_the_latest_state_elsewhere_within_30_s",
    "test_broker_nats_cluster.py::test_a_sigkilled_broadcaster_reads_offline_on_every_nats_node_from_its_will",  # 7
    "test_crash_points.py::test_killed_mid_request_with_the_answer_held",  # 11
    # 7 to 10 s: real instances on PostgreSQL starting up.
    "test_ha_startup.py::test_three_instances_started_at_the_same_instant_on_an_empty_database_make_one_leader",
    "test_ha_startup.py::test_a_standby_started_against_a_database_a_newer_release_migrated_refuses_with_exit_2",
    "test_secrets_hygiene.py::test_planted_secrets_appear_in_no_output",  # 10
    "test_cli_validation.py::test_the_command_line_and_the_api_decide_alike",  # 9
    "test_pipeline_mqtt.py::test_after_the_broker_returns_every_station_shows_the_latest_state_not_the_saved_one",
    "test_inflight_restart.py::test_a_restart_after_a_kill_mid_request_waits_for_the_attempts_deadline_and_posts_once",
    "test_config_secrets.py::test_run_and_once_refuse_an_mqtt_secret_the_machine_lacks_instead_of_logging_in_anonymously",
    "test_cli_validation.py::test_any_json_body_gets_a_4xx_or_201_never_a_500",  # 7
    "test_admin_idempotency.py::test_the_command_line_retries_with_a_key_make_one_notice",  # 6
    "test_demo_browser.py::test_the_board_follows_the_signal_fault_and_goes_unavailable_when_the_broadcaster_stops",
    "test_bench_smoke.py::test_bench_runs_on_a_tiny_city_and_writes_its_results",  # 5
    "test_bench_smoke.py::test_outage_bench_runs_its_three_phases_and_writes_its_results",
    "test_demo_cli.py::test_the_demo_starts_in_seconds_serves_and_stops_on_ctrl_c",
    "test_broker_urls.py::test_the_link_fails_over_to_the_next_broker_republishes_everything_and_does_not_flap_back",
    "test_broker_bridge_tree.py::test_the_broadcaster_fails_over_to_the_second_core_and_displays_on_every_edge_converge",
    "test_broker_bridge_tree.py::test_a_killed_broadcasters_will_reaches_the_displays_on_every_edge",
    "test_crash_points.py::test_killed_after_the_commit_before_anything_was_sent",
    "test_not_modified_restart.py::test_removed_alert_resolves_across_once_runs_answered_304",
    "test_not_modified_restart.py::test_removed_alert_resolves_across_a_restarted_run_answered_304",
    "test_cli_process.py::test_a_second_installation_with_the_same_client_id_refuses_to_start",
    "test_feed_problems_visible.py::test_status_lists_every_skipped_record_of_the_last_poll",
    "test_batch_status.py::test_a_sigkilled_run_after_a_batch_still_reads_offline",
    "test_config_secrets.py::test_no_config_error_carries_a_planted_value",
    "test_display_board_v12.py::test_the_board_shows_service_changes_and_a_batch_status_until_its_valid_until",
    "test_mosquitto_production.py::test_displays_and_commuters_cannot_publish_or_overwrite_retained_state",
    "test_admin_idempotency.py::test_concurrent_command_line_requests_with_one_key_through_a_running_broadcaster",
    "test_platform_answers.py::test_any_answer_gives_a_receipt_or_a_delivery_error_with_a_bounded_wait",  # 4 each
)


class NodeItem(Protocol):
    """What ordering needs of a `pytest.Item`."""

    @property
    def nodeid(self) -> str: ...


def long_test_rank(nodeid: str) -> int | None:
    """The place of `nodeid` (``tests/test_x.py::test_y[param]``) in `LONG_TESTS`, None for the rest."""
    path, _, name = nodeid.partition("::")
    key = f"{path.rsplit('/', 1)[-1]}::{name.partition('[')[0]}"
    try:
        return LONG_TESTS.index(key)
    except ValueError:
        return None


Item = TypeVar("Item", bound=NodeItem)


def long_tests_first(items: Sequence[Item]) -> list[Item]:
    """`items` with the long tests moved to the front, longest first; the rest keep their order (and so their
    module-scoped fixtures stay together)."""
    ranked = [(rank, i) for i, item in enumerate(items) if (rank := long_test_rank(item.nodeid)) is not None]
    front = [items[i] for _, i in sorted(ranked)]
    moved = {i for _, i in ranked}
    return front + [item for i, item in enumerate(items) if i not in moved]
