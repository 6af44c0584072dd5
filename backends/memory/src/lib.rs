//! In-process backbone for tidings.
//!
//! Every hub attached to one [`MemoryBackbone`] (or to a clone of it) shares publications with
//! the others, as separate server instances would through a broker. Use it for a single
//! instance, for tests that run several "instances" in one process, and as the reference
//! behaviour of the other backbones.
//!
//! # How it works
//!
//! Each attached hub has an interest set. A publication is handed, synchronously and without
//! encoding, to every other hub that has interest in at least one of its topics (or in
//! [`ALL_TOPICS`]), with the envelope's topics narrowed to that interest. A hub never receives
//! its own publications.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tidings_core::Hub;
//! use tidings_memory::MemoryBackbone;
//!
//! let bus = MemoryBackbone::new();
//! let first = Hub::builder().backbone(bus.clone()).build().await?;
//! let second = Hub::builder().backbone(bus.clone()).build().await?;
//! let mut news = second.subscribe(["news"]).await?;
//! first.publish(["news"], &"hello").await?;
//! assert_eq!(news.recv().await.unwrap().decode::<String>()?, "hello");
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use tidings_core::{
    Backbone, BackboneError, BackboneLink, BackboneState, Envelope, Inbound, ALL_TOPICS,
};

struct Member {
    instance_id: String,
    inbound: Arc<dyn Inbound>,
    topics: HashSet<String>,
}

#[derive(Default)]
struct Bus {
    members: RwLock<HashMap<u64, Member>>,
    next_member: AtomicU64,
}

impl Bus {
    fn members(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Member>> {
        self.members
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn members_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Member>> {
        self.members
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An in-process bus shared by every hub attached to it. Clones share the same bus.
#[derive(Clone, Default)]
pub struct MemoryBackbone {
    bus: Arc<Bus>,
}

impl std::fmt::Debug for MemoryBackbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackbone")
            .field("members", &self.bus.members().len())
            .finish()
    }
}

impl MemoryBackbone {
    /// Creates a new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the number of hubs attached.
    pub fn member_count(&self) -> usize {
        self.bus.members().len()
    }
}

#[async_trait]
impl Backbone for MemoryBackbone {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn attach(
        &self,
        instance_id: &str,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Box<dyn BackboneLink>, BackboneError> {
        let member_id = self.bus.next_member.fetch_add(1, Ordering::Relaxed);
        inbound.state_changed(BackboneState::Connected);
        self.bus.members_mut().insert(
            member_id,
            Member {
                instance_id: instance_id.to_owned(),
                inbound,
                topics: HashSet::new(),
            },
        );
        Ok(Box::new(MemoryLink {
            bus: Arc::clone(&self.bus),
            member_id,
        }))
    }
}

/// One hub's membership of a [`MemoryBackbone`]. Leaves the bus when dropped.
struct MemoryLink {
    bus: Arc<Bus>,
    member_id: u64,
}

#[async_trait]
impl BackboneLink for MemoryLink {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BackboneError> {
        let members = self.bus.members();
        for (id, member) in members.iter() {
            if *id == self.member_id || member.instance_id == envelope.notifier_id {
                continue;
            }
            if member.topics.contains(ALL_TOPICS) {
                member.inbound.deliver(envelope.clone());
                continue;
            }
            let topics: Vec<String> = envelope
                .topics
                .iter()
                .filter(|topic| member.topics.contains(topic.as_str()))
                .cloned()
                .collect();
            if topics.is_empty() {
                continue;
            }
            member.inbound.deliver(Envelope {
                notifier_id: envelope.notifier_id.clone(),
                topics,
                data: envelope.data.clone(),
            });
        }
        Ok(())
    }

    async fn subscribe(&self, topics: &[String]) -> Result<(), BackboneError> {
        if let Some(member) = self.bus.members_mut().get_mut(&self.member_id) {
            member.topics.extend(topics.iter().cloned());
        }
        Ok(())
    }

    async fn unsubscribe(&self, topics: &[String]) -> Result<(), BackboneError> {
        if let Some(member) = self.bus.members_mut().get_mut(&self.member_id) {
            for topic in topics {
                member.topics.remove(topic);
            }
        }
        Ok(())
    }

    async fn close(&self) {
        self.bus.members_mut().remove(&self.member_id);
    }
}

impl Drop for MemoryLink {
    fn drop(&mut self) {
        self.bus.members_mut().remove(&self.member_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::Hub;

    async fn hubs(count: usize) -> (MemoryBackbone, Vec<Hub>) {
        let bus = MemoryBackbone::new();
        let mut hubs = Vec::new();
        for _ in 0..count {
            hubs.push(Hub::builder().backbone(bus.clone()).build().await.unwrap());
        }
        (bus, hubs)
    }

    #[tokio::test]
    async fn publication_reaches_other_hubs_once() {
        let (_bus, hubs) = hubs(3).await;
        let mut on_second = hubs[1].subscribe(["t"]).await.unwrap();
        let mut on_third = hubs[2].subscribe(["t"]).await.unwrap();
        let mut on_first = hubs[0].subscribe(["t"]).await.unwrap();

        hubs[0].publish(["t"], &1).await.unwrap();
        hubs[0].publish(["t"], &2).await.unwrap();

        for subscription in [&mut on_first, &mut on_second, &mut on_third] {
            assert_eq!(
                subscription.recv().await.unwrap().decode::<i32>().unwrap(),
                1
            );
            assert_eq!(
                subscription.recv().await.unwrap().decode::<i32>().unwrap(),
                2
            );
            assert!(subscription.try_recv().is_none(), "duplicate delivery");
        }
    }

    #[tokio::test]
    async fn hub_without_interest_receives_nothing() {
        let (_bus, hubs) = hubs(2).await;
        let _other = hubs[1].subscribe(["wanted"]).await.unwrap();
        hubs[0].publish(["unwanted"], &1).await.unwrap();
        assert_eq!(hubs[1].stats().backbone_received, 0);
        hubs[0].publish(["wanted"], &1).await.unwrap();
        assert_eq!(hubs[1].stats().backbone_received, 1);
    }

    #[tokio::test]
    async fn all_topics_interest_receives_every_topic() {
        let (_bus, hubs) = hubs(2).await;
        let mut all = hubs[1].subscribe([ALL_TOPICS]).await.unwrap();
        hubs[0].publish(["anything"], &"x").await.unwrap();
        let event = all.recv().await.unwrap();
        assert_eq!(event.topic(), "anything");
    }

    #[tokio::test]
    async fn dropped_subscription_removes_interest() {
        let (bus, hubs) = hubs(2).await;
        let subscription = hubs[1].subscribe(["t"]).await.unwrap();
        subscription.unsubscribe().await;
        hubs[0].publish(["t"], &1).await.unwrap();
        assert_eq!(hubs[1].stats().backbone_received, 0);
        assert_eq!(hubs[1].topic_count(), 0);
        drop(hubs);
        assert_eq!(bus.member_count(), 0);
    }
}
