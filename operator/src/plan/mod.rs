//! Pure ServiceLB core: observed objects -> desired DaemonSets, ServiceLoadBalancers, Service
//! statuses and conditions; no I/O.
