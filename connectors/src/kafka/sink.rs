//! The Kafka sink operator: produces each record of a stream and reports, through its output's frontier, what the
//! broker has acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chorus_operators::wakeup::Wakeup;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::{Acks, Producer, Record};
use crate::Fatal;

/// Produces each record of `stream` to `topic`. The returned stream carries no data: its frontier is what the broker
/// has acknowledged, time by time, for the probe that gates offset commits.
pub fn sink<'scope, D: 'static>(
    stream: StreamVec<'scope, u64, D>,
    name: &str,
    producer: Producer,
    topic: String,
    check_interval: Duration,
    fatal: Fatal,
    mut encode: impl FnMut(D) -> Record + 'static,
) -> StreamVec<'scope, u64, ()> {
    let scope = stream.scope();
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let mut input = builder.new_input(stream, Pipeline);
    let (acked_out, acked) = builder.new_output::<Vec<()>>();
    let _acked_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<()>>>::from(acked_out);
    let mut wakeup = Wakeup::new(scope.activator_for(info.address.clone()));
    builder.build(move |_initial| {
        let acks = Arc::new(Acks::default());
        let mut unacknowledged: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
        move |_frontiers| {
            input.for_each(|capability, records| {
                let time = *capability.least().expect("records travel with a time");
                for record in records.drain(..) {
                    if let Err(error) = producer.send(&topic, &encode(record), &acks, time) {
                        fatal.raise(error.to_string());
                    }
                }
                unacknowledged.entry(time).or_insert_with(|| capability.delayed(&time, 0));
            });
            if let Some(failure) = acks.failure() {
                fatal.raise(failure);
            }
            // A time is done once all its messages are acknowledged, whatever else the shared producer carries.
            unacknowledged.retain(|time, _| !acks.settled(*time));
            if !unacknowledged.is_empty() {
                wakeup.within(check_interval);
            }
        }
    });
    acked
}
