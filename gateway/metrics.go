package gateway

import (
	"io"
	"time"

	"github.com/sipmesh/sipmesh/metrics"
)

// WriteMetrics writes the node's counters in the Prometheus text format
// (what `/metrics` serves): SSR routing, the DHT, and on a node with a
// phone LAN the SIP registrar and proxy, the media relay, DNS and DHCP.
// Families of a service that is not running are left out, so a relay-only
// node shows no SIP families rather than zeros.
func (n *Node) WriteMetrics(out io.Writer) error {
	w := metrics.NewWriter(out)
	all := func(ms []metric) {
		for _, m := range ms {
			w.One(m.name, m.typ, m.help, m.v)
		}
	}

	w.Family("sipmesh_build_info", metrics.Gauge, "Always 1; the labels name the node and its version.")
	w.Sample("sipmesh_build_info", 1, "version", n.opts.Version, "name", n.opts.Name, "id", n.router.ID().String())
	all([]metric{
		{"sipmesh_start_time_seconds", metrics.Gauge, "When the node started, in seconds since the Unix epoch.", float64(n.start.UnixMilli()) / 1e3},
	})

	st := n.router.Status()
	s, d := st.Stats, st.Driver
	all([]metric{
		{"sipmesh_ssr_frames_received_total", metrics.Counter, "SSR frames received on mesh links.", float64(s.FramesIn)},
		{"sipmesh_ssr_frames_sent_total", metrics.Counter, "SSR frames sent on mesh links.", float64(s.FramesOut)},
		{"sipmesh_ssr_control_frames_sent_total", metrics.Counter, "SSR frames sent that were not application data.", float64(s.ControlOut)},
		{"sipmesh_ssr_frames_malformed_total", metrics.Counter, "SSR frames dropped because they did not decode.", float64(s.Malformed)},
		{"sipmesh_ssr_frames_forwarded_total", metrics.Counter, "SSR frames relayed for other nodes.", float64(s.Forwarded)},
		{"sipmesh_ssr_datagrams_delivered_total", metrics.Counter, "Datagrams delivered to this node's mesh sockets.", float64(s.Delivered)},
		{"sipmesh_ssr_frames_dropped_total", metrics.Counter, "SSR frames dropped (hop budget, no route, loops).", float64(s.Dropped)},
		{"sipmesh_ssr_link_broken_reports_total", metrics.Counter, "Broken-link reports sent.", float64(s.LinkBroken)},
		{"sipmesh_ssr_unreachable_reports_total", metrics.Counter, "Unreachable reports sent.", float64(s.Unreachable)},
		{"sipmesh_ssr_frames_redirected_total", metrics.Counter, "Relayed frames sent to a node closer to their target than planned.", float64(s.Redirected)},
		{"sipmesh_ssr_frames_shortened_total", metrics.Counter, "Relayed frames given a shorter cached route.", float64(s.Shortened)},
		{"sipmesh_ssr_send_errors_total", metrics.Counter, "Mesh link socket writes that failed.", float64(d.SendErrors)},
		{"sipmesh_ssr_read_errors_total", metrics.Counter, "Mesh link socket reads that failed.", float64(d.ReadErrors)},
		{"sipmesh_ssr_socket_queue_full_total", metrics.Counter, "Datagrams dropped at a full mesh socket.", float64(d.SocketQueueFull)},
		{"sipmesh_ssr_no_listener_total", metrics.Counter, "Datagrams for an unbound mesh port.", float64(d.NoListener)},
		{"sipmesh_ssr_route_cache_entries", metrics.Gauge, "Source routes in the route cache.", float64(st.CacheEntries)},
		{"sipmesh_ssr_neighbours", metrics.Gauge, "Nodes heard directly on the mesh interfaces.", float64(len(st.Neighbours))},
		{"sipmesh_ssr_fingers", metrics.Gauge, "Ring fingers known.", float64(len(st.Fingers))},
	})
	a := st.Auth
	all([]metric{
		{"sipmesh_ssr_link_sessions", metrics.Gauge, "Authenticated sessions with mesh neighbours.", float64(a.Sessions)},
		{"sipmesh_ssr_link_handshakes_total", metrics.Counter, "Link handshakes completed.", float64(a.Handshakes)},
	})
	w.Family("sipmesh_ssr_link_refused_total", metrics.Counter, "Mesh frames and handshakes refused by link security, by reason.")
	for _, r := range []struct {
		reason string
		n      uint64
	}{
		{"unauthenticated", a.Unauthenticated}, {"bad_mac", a.BadMAC}, {"replayed", a.Replayed},
		{"wrong_sender", a.WrongSender}, {"bad_identity", a.BadIdentity}, {"bad_handshake", a.BadHandshake},
		{"mode_mismatch", a.ModeMismatch}, {"old_version", a.OldVersion}, {"rate_limited", a.RateLimited},
	} {
		w.Sample("sipmesh_ssr_link_refused_total", float64(r.n), "reason", r.reason)
	}
	all([]metric{
		{"sipmesh_ssr_e2e_sessions", metrics.Gauge, "End-to-end sessions with the sources and targets of datagrams.", float64(a.E2ESessions)},
		{"sipmesh_ssr_e2e_handshakes_total", metrics.Counter, "End-to-end handshakes completed.", float64(a.E2EHandshakes)},
		{"sipmesh_ssr_e2e_queued", metrics.Gauge, "Datagrams waiting for an end-to-end handshake.", float64(a.E2EQueued)},
	})
	w.Family("sipmesh_ssr_e2e_refused_total", metrics.Counter, "Datagrams and end-to-end handshakes refused or dropped by end-to-end authentication, by reason.")
	for _, r := range []struct {
		reason string
		n      uint64
	}{
		{"unauthenticated", a.E2EUnauthenticated}, {"bad_mac", a.E2EBadMAC},
		{"replayed", a.E2EReplayed}, {"wrong_sender", a.E2EWrongSender}, {"bad_handshake", a.E2EBadHandshake},
		{"rate_limited", a.E2ERateLimited}, {"queue_dropped", a.E2EQueueDropped},
	} {
		w.Sample("sipmesh_ssr_e2e_refused_total", float64(r.n), "reason", r.reason)
	}
	if len(st.Neighbours) > 0 {
		w.Family("sipmesh_ssr_link_quality_ratio", metrics.Gauge, "Fraction of recent beacons heard from a neighbour.")
		for _, nb := range st.Neighbours {
			w.Sample("sipmesh_ssr_link_quality_ratio", nb.Quality, "neighbour", nb.ID, "iface", nb.Interface)
		}
	}

	m := n.svc.dht.Metrics()
	all([]metric{
		{"sipmesh_dht_records", metrics.Gauge, "DHT records held.", float64(m.Records)},
		{"sipmesh_dht_tombstones", metrics.Gauge, "DHT tombstones held.", float64(m.Tombstones)},
		{"sipmesh_dht_stored_bytes", metrics.Gauge, "Bytes of DHT records held.", float64(m.Bytes)},
		{"sipmesh_dht_puts_served_total", metrics.Counter, "DHT stores served as owner.", float64(m.PutsServed)},
		{"sipmesh_dht_gets_served_total", metrics.Counter, "DHT gets served as owner.", float64(m.GetsServed)},
		{"sipmesh_dht_records_stored_total", metrics.Counter, "New DHT record versions stored.", float64(m.Stored)},
		{"sipmesh_dht_records_refused_total", metrics.Counter, "DHT records refused, any reason.", float64(m.Refused)},
		{"sipmesh_dht_records_expired_total", metrics.Counter, "DHT records expired.", float64(m.Expired)},
		{"sipmesh_dht_handoffs_sent_total", metrics.Counter, "DHT records handed off to a new owner.", float64(m.HandoffsSent)},
		{"sipmesh_dht_sync_rounds_total", metrics.Counter, "DHT replica synchronisation rounds.", float64(m.SyncRounds)},
		{"sipmesh_dht_messages_malformed_total", metrics.Counter, "DHT messages that did not decode.", float64(m.Malformed)},
		{"sipmesh_dht_walk_steps_total", metrics.Counter, "DHT gets and writes sent past a key's owner (eclipse defence).", float64(m.WalkSteps)},
		{"sipmesh_dht_walk_served_total", metrics.Counter, "DHT requests past a key's owner answered here.", float64(m.WalkServed)},
		{"sipmesh_dht_walk_found_total", metrics.Counter, "DHT gets of this node answered by a node past the key's owner.", float64(m.WalkFound)},
		{"sipmesh_dht_kept_in_arc_total", metrics.Counter, "DHT copies handed off but kept: within the arc below their key.", float64(m.KeptInArc)},
		{"sipmesh_dht_requests_total", metrics.Counter, "DHT puts, gets and deletes of this node.", float64(m.Requests)},
		{"sipmesh_dht_request_timeouts_total", metrics.Counter, "DHT requests of this node given up.", float64(m.Timeouts)},
		{"sipmesh_dht_lookups_total", metrics.Counter, "Completed DHT gets.", float64(m.Lookups)},
		{"sipmesh_dht_lookup_hops_total", metrics.Counter, "Hops of completed DHT gets, summed.", float64(m.LookupHops)},
	})

	s2 := n.svc
	s2.mu.Lock()
	sip := s2.sip
	s2.mu.Unlock()
	if sip != nil {
		ss := sip.Stats()
		all([]metric{
			{"sipmesh_sip_requests_total", metrics.Counter, "SIP requests received on the LAN and mesh sockets (after the rate limit).", float64(ss.Requests)},
			{"sipmesh_sip_proxied_requests_total", metrics.Counter, "SIP requests forwarded by the proxy (per branch).", float64(ss.Proxied)},
			{"sipmesh_sip_rate_limited_total", metrics.Counter, "SIP requests dropped by the per-source rate limit.", float64(ss.RateLimited)},
			{"sipmesh_sip_overloaded_total", metrics.Counter, "SIP requests dropped: the source was over its fair share of live transactions.", float64(ss.Overloaded)},
			{"sipmesh_sip_retransmissions_total", metrics.Counter, "SIP requests answered again from the record of their final response (Timer J).", float64(ss.Retransmissions)},
			{"sipmesh_sip_answered", metrics.Gauge, "Records of answered SIP requests kept for retransmissions.", float64(ss.Answered)},
			{"sipmesh_sip_malformed_total", metrics.Counter, "SIP messages answered 400 or dropped as unparsable.", float64(ss.Malformed)},
			{"sipmesh_sip_transactions", metrics.Gauge, "Live SIP transactions.", float64(ss.Transactions)},
			{"sipmesh_sip_calls", metrics.Gauge, "Calls with media relayed by this node.", float64(ss.Calls)},
		})
		rs := s2.reg.Stats()
		all([]metric{
			{"sipmesh_sip_register_challenged_total", metrics.Counter, "REGISTERs answered 401.", float64(rs.Challenged)},
			{"sipmesh_sip_register_forbidden_total", metrics.Counter, "REGISTERs answered 403.", float64(rs.Forbidden)},
			{"sipmesh_sip_registrations_total", metrics.Counter, "Successful REGISTERs.", float64(rs.Registered)},
			{"sipmesh_sip_register_retransmitted_total", metrics.Counter, "REGISTERs answered from the response cache.", float64(rs.Retransmitted)},
			{"sipmesh_sip_store_errors_total", metrics.Counter, "Location or account store failures.", float64(rs.StoreErrors)},
			{"sipmesh_relay_sessions", metrics.Gauge, "Media relay sessions (one per relayed stream).", float64(s2.relay.Sessions())},
		})
		ds := s2.dns.Stats()
		all([]metric{
			{"sipmesh_dns_queries_total", metrics.Counter, "DNS queries answered.", float64(ds.Queries)},
			{"sipmesh_dns_mesh_queries_total", metrics.Counter, "DNS queries in the .mesh zone.", float64(ds.Mesh)},
			{"sipmesh_dns_forwarded_queries_total", metrics.Counter, "DNS queries forwarded upstream.", float64(ds.Forwarded)},
			{"sipmesh_dns_synthesized_total", metrics.Counter, "DNS64-synthesised AAAA answers.", float64(ds.Synthesized)},
			{"sipmesh_dns_cache_hits_total", metrics.Counter, "Upstream look-ups answered from the cache.", float64(ds.CacheHits)},
			{"sipmesh_dns_rate_limited_total", metrics.Counter, "DNS queries dropped by the rate limit.", float64(ds.RateLimited)},
			{"sipmesh_dns_malformed_total", metrics.Counter, "DNS messages that did not parse.", float64(ds.Malformed)},
		})
		if s2.dhcp != nil {
			h := s2.dhcp.Stats()
			w.Family("sipmesh_dhcp_messages_received_total", metrics.Counter, "DHCP client messages received, by type.")
			for _, t := range []struct {
				typ string
				v   uint64
			}{{"discover", h.Discover}, {"request", h.Request}, {"decline", h.Decline}, {"release", h.Release}, {"inform", h.Inform}} {
				w.Sample("sipmesh_dhcp_messages_received_total", float64(t.v), "type", t.typ)
			}
			w.Family("sipmesh_dhcp_messages_sent_total", metrics.Counter, "DHCP server messages sent, by type.")
			for _, t := range []struct {
				typ string
				v   uint64
			}{{"offer", h.Offer}, {"ack", h.Ack}, {"nak", h.Nak}} {
				w.Sample("sipmesh_dhcp_messages_sent_total", float64(t.v), "type", t.typ)
			}
			all([]metric{
				{"sipmesh_dhcp_malformed_total", metrics.Counter, "Datagrams that are not DHCP client messages served here.", float64(h.Malformed)},
				{"sipmesh_dhcp_ignored_total", metrics.Counter, "Valid DHCP messages left unanswered.", float64(h.Ignored)},
				{"sipmesh_dhcp_persist_errors_total", metrics.Counter, "Lease file writes that failed.", float64(h.PersistErrors)},
			})
		}
	}
	if ip := n.ipStatus(); ip != nil {
		all([]metric{
			{"sipmesh_ip_packets_from_tun_total", metrics.Counter, "IPv6 packets the kernel routed into the mesh TUN.", float64(ip.FromTUN)},
			{"sipmesh_ip_packets_to_mesh_total", metrics.Counter, "IPv6 packets sent to other nodes over the mesh.", float64(ip.ToMesh)},
			{"sipmesh_ip_packets_from_mesh_total", metrics.Counter, "IPv6 packets other nodes sent to this one.", float64(ip.FromMesh)},
			{"sipmesh_ip_packets_to_tun_total", metrics.Counter, "IPv6 packets written into the TUN (ICMPv6 errors included).", float64(ip.ToTUN)},
			{"sipmesh_ip_malformed_total", metrics.Counter, "Packets that were not IPv6.", float64(ip.Malformed)},
			{"sipmesh_ip_link_scope_total", metrics.Counter, "Link-local and multicast packets from the TUN (its router solicitations, MLD, redirects): not carried.", float64(ip.LinkScope)},
			{"sipmesh_ip_spoofed_total", metrics.Counter, "Packets dropped: source not the sending side's.", float64(ip.Spoofed)},
			{"sipmesh_ip_not_ours_total", metrics.Counter, "Packets from the mesh for addresses this node does not serve.", float64(ip.NotOurs)},
			{"sipmesh_ip_no_route_total", metrics.Counter, "Packets with no node or exit (Destination Unreachable sent).", float64(ip.NoRoute)},
			{"sipmesh_ip_too_big_total", metrics.Counter, "Packets over the MTU (Packet Too Big sent).", float64(ip.TooBig)},
			{"sipmesh_ip_unreachable_total", metrics.Counter, "Mesh reports of an unreachable node answered with Destination Unreachable.", float64(ip.Unreachable)},
			{"sipmesh_ip_icmp_limited_total", metrics.Counter, "ICMPv6 errors not sent for the rate limit.", float64(ip.ICMPLimited)},
			{"sipmesh_ip_send_errors_total", metrics.Counter, "Mesh sends of IP packets that failed.", float64(ip.SendErrors)},
			{"sipmesh_ip_tun_errors_total", metrics.Counter, "Packets the TUN refused or lost.", float64(ip.TUNErrors)},
		})
	}
	return w.Flush()
}

// uptime is how long the node has run.
func (n *Node) uptime() time.Duration { return time.Since(n.start) }

// metric is a family of one unlabelled sample: a table of them costs the
// router build less code than a call per counter.
type metric struct {
	name string
	typ  metrics.Type
	help string
	v    float64
}
