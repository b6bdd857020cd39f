//! Tests of the decision table: every rule from the data file, and mirror symmetry.

use proptest::prelude::*;

use super::*;

fn parse_view(text: &str, line_number: usize) -> SyncView {
    let mut view = SyncView {
        generations: GenerationSet::default(),
        node_id: NodeId(0),
        crashed_primary: false,
        crashed_secondary: false,
        primary: false,
        out_of_sync_granules: 0,
    };
    for field in text.split_whitespace() {
        let number = |value: &str| -> u64 {
            value
                .parse()
                .unwrap_or_else(|_| panic!("line {line_number}: bad number in {field}"))
        };
        match field.split_once('=') {
            Some(("c", value)) => view.generations.current = Generation(number(value)),
            Some(("b", value)) => view.generations.bitmap = Generation(number(value)),
            Some(("h", value)) => {
                for (slot, entry) in value.split(',').enumerate() {
                    view.generations.history[slot] = Generation(number(entry));
                }
            }
            Some(("id", value)) => view.node_id = NodeId(number(value) as u8),
            Some(("oos", value)) => view.out_of_sync_granules = number(value),
            None if field == "crashed" => view.crashed_primary = true,
            None if field == "crashed-secondary" => view.crashed_secondary = true,
            None if field == "primary" => view.primary = true,
            _ => panic!("line {line_number}: unknown field {field}"),
        }
    }
    view
}

fn rule_named(name: &str) -> SyncRule {
    *SyncRule::ALL
        .iter()
        .find(|rule| rule.to_string() == name)
        .expect("known rule")
}

#[test]
fn every_rule_behaves_as_the_data_file_says() {
    let text = include_str!("testdata/decide_sync.txt");
    let mut rules_seen = std::collections::HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let number = index + 1;
        let (views, expected) = line.split_once("=>").expect("case has =>");
        let (local, peer) = views.split_once('|').expect("case has |");
        let (decision, rule) = expected
            .trim()
            .split_once(" by ")
            .expect("expected has 'by'");
        let local = parse_view(local, number);
        let peer = parse_view(peer, number);
        let (got_decision, got_rule) = decide_sync(&local, &peer);
        assert_eq!(
            (got_decision.to_string(), got_rule.to_string()),
            (decision.to_string(), rule.to_string()),
            "line {number}: {line}"
        );
        let (mirror_decision, mirror_rule) = decide_sync(&peer, &local);
        assert_eq!(
            mirror_decision,
            got_decision.reverse(),
            "line {number} reversed"
        );
        assert_eq!(mirror_rule, got_rule.reverse(), "line {number} reversed");
        rules_seen.insert(rule_named(rule));
    }
    for rule in SyncRule::ALL {
        assert!(rules_seen.contains(&rule), "no case covers rule {rule}");
    }
}

fn generation_strategy() -> impl Strategy<Value = Generation> {
    // A small alphabet makes matches between the two sides frequent.
    (0u64..6).prop_map(Generation)
}

fn view_strategy(node: u8) -> impl Strategy<Value = SyncView> {
    let flags = (any::<bool>(), any::<bool>(), any::<bool>(), 0u64..3);
    let generations = (
        generation_strategy(),
        generation_strategy(),
        proptest::array::uniform4(generation_strategy()),
    );
    (generations, flags).prop_map(move |((current, bitmap, history), flags)| {
        let (crashed_primary, crashed_secondary, primary, oos) = flags;
        SyncView {
            generations: GenerationSet {
                current,
                bitmap,
                history,
            },
            node_id: NodeId(node),
            crashed_primary,
            crashed_secondary,
            primary,
            out_of_sync_granules: oos,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// Two nodes looking at the same pair of views always reach mirror-image decisions, by
    /// mirror-image rules.
    #[test]
    fn both_nodes_reach_mirror_image_decisions(a in view_strategy(0), b in view_strategy(1)) {
        let (decision_a, rule_a) = decide_sync(&a, &b);
        let (decision_b, rule_b) = decide_sync(&b, &a);
        prop_assert_eq!(decision_b, decision_a.reverse());
        prop_assert_eq!(rule_b, rule_a.reverse());
        // Exactly one side sends when anything is sent.
        prop_assert!(!(decision_a.is_source() && decision_b.is_source()));
        prop_assert_eq!(decision_a.is_source(), decision_b.is_target());
    }
}

#[test]
fn a_new_generation_keeps_the_shared_one_in_the_bitmap_slot() {
    let mut set = GenerationSet {
        current: Generation(5),
        ..GenerationSet::default()
    };
    set.start_new(Generation(6));
    assert_eq!(set.current, Generation(6));
    assert_eq!(set.bitmap, Generation(5));
    // A second new generation (a forced promotion) keeps the bitmap's base and remembers 6.
    set.start_new(Generation(7));
    assert_eq!(set.bitmap, Generation(5));
    assert_eq!(set.history[0], Generation(6));
    set.finish_as_sync_source();
    assert_eq!(set.bitmap, Generation::NONE);
    assert!(set.in_history(Generation(5)));
    let mut target = GenerationSet {
        current: Generation(5),
        ..GenerationSet::default()
    };
    target.finish_as_sync_target(&set);
    assert_eq!(target.current, Generation(7));
    assert_eq!(target.bitmap, Generation::NONE);
}
