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
	c := func(name, help string, v uint64) { w.One("sipmesh_"+name, metrics.Counter, help, float64(v)) }
	g := func(name, help string, v float64) { w.One("sipmesh_"+name, metrics.Gauge, help, v) }

	w.Family("sipmesh_build_info", metrics.Gauge, "Always 1; the labels name the node and its version.")
	w.Sample("sipmesh_build_info", 1, "version", n.opts.Version, "name", n.opts.Name, "id", n.router.ID().String())
	g("start_time_seconds", "When the node started, in seconds since the Unix epoch.", float64(n.start.UnixMilli())/1e3)

	st := n.router.Status()
	s, d := st.Stats, st.Driver
	c("ssr_frames_received_total", "SSR frames received on mesh links.", s.FramesIn)
	c("ssr_frames_sent_total", "SSR frames sent on mesh links.", s.FramesOut)
	c("ssr_control_frames_sent_total", "SSR frames sent that were not application data.", s.ControlOut)
	c("ssr_frames_malformed_total", "SSR frames dropped because they did not decode.", s.Malformed)
	c("ssr_frames_forwarded_total", "SSR frames relayed for other nodes.", s.Forwarded)
	c("ssr_datagrams_delivered_total", "Datagrams delivered to this node's mesh sockets.", s.Delivered)
	c("ssr_frames_dropped_total", "SSR frames dropped (hop budget, no route, loops).", s.Dropped)
	c("ssr_link_broken_reports_total", "Broken-link reports sent.", s.LinkBroken)
	c("ssr_unreachable_reports_total", "Unreachable reports sent.", s.Unreachable)
	c("ssr_frames_redirected_total", "Relayed frames sent to a node closer to their target than planned.", s.Redirected)
	c("ssr_frames_shortened_total", "Relayed frames given a shorter cached route.", s.Shortened)
	c("ssr_send_errors_total", "Mesh link socket writes that failed.", d.SendErrors)
	c("ssr_read_errors_total", "Mesh link socket reads that failed.", d.ReadErrors)
	c("ssr_socket_queue_full_total", "Datagrams dropped at a full mesh socket.", d.SocketQueueFull)
	c("ssr_no_listener_total", "Datagrams for an unbound mesh port.", d.NoListener)
	g("ssr_route_cache_entries", "Source routes in the route cache.", float64(st.CacheEntries))
	g("ssr_neighbours", "Nodes heard directly on the mesh interfaces.", float64(len(st.Neighbours)))
	g("ssr_fingers", "Ring fingers known.", float64(len(st.Fingers)))
	if len(st.Neighbours) > 0 {
		w.Family("sipmesh_ssr_link_quality_ratio", metrics.Gauge, "Fraction of recent beacons heard from a neighbour.")
		for _, nb := range st.Neighbours {
			w.Sample("sipmesh_ssr_link_quality_ratio", nb.Quality, "neighbour", nb.ID, "iface", nb.Interface)
		}
	}

	m := n.svc.dht.Metrics()
	g("dht_records", "DHT records held.", float64(m.Records))
	g("dht_tombstones", "DHT tombstones held.", float64(m.Tombstones))
	g("dht_stored_bytes", "Bytes of DHT records held.", float64(m.Bytes))
	c("dht_puts_served_total", "DHT stores served as owner.", m.PutsServed)
	c("dht_gets_served_total", "DHT gets served as owner.", m.GetsServed)
	c("dht_records_stored_total", "New DHT record versions stored.", m.Stored)
	c("dht_records_refused_total", "DHT records refused, any reason.", m.Refused)
	c("dht_records_expired_total", "DHT records expired.", m.Expired)
	c("dht_handoffs_sent_total", "DHT records handed off to a new owner.", m.HandoffsSent)
	c("dht_sync_rounds_total", "DHT replica synchronisation rounds.", m.SyncRounds)
	c("dht_messages_malformed_total", "DHT messages that did not decode.", m.Malformed)
	c("dht_requests_total", "DHT puts, gets and deletes of this node.", m.Requests)
	c("dht_request_timeouts_total", "DHT requests of this node given up.", m.Timeouts)
	c("dht_lookups_total", "Completed DHT gets.", m.Lookups)
	c("dht_lookup_hops_total", "Hops of completed DHT gets, summed.", m.LookupHops)

	s2 := n.svc
	s2.mu.Lock()
	sip := s2.sip
	s2.mu.Unlock()
	if sip != nil {
		ss := sip.Stats()
		c("sip_requests_total", "SIP requests received on the LAN and mesh sockets (after the rate limit).", ss.Requests)
		c("sip_proxied_requests_total", "SIP requests forwarded by the proxy (per branch).", ss.Proxied)
		c("sip_rate_limited_total", "SIP messages dropped by the per-source rate limit.", ss.RateLimited)
		c("sip_overloaded_total", "SIP requests dropped: too many live transactions.", ss.Overloaded)
		c("sip_malformed_total", "SIP messages answered 400 or dropped as unparsable.", ss.Malformed)
		g("sip_transactions", "Live SIP transactions.", float64(ss.Transactions))
		g("sip_calls", "Calls with media relayed by this node.", float64(ss.Calls))
		rs := s2.reg.Stats()
		c("sip_register_challenged_total", "REGISTERs answered 401.", rs.Challenged)
		c("sip_register_forbidden_total", "REGISTERs answered 403.", rs.Forbidden)
		c("sip_registrations_total", "Successful REGISTERs.", rs.Registered)
		c("sip_register_retransmitted_total", "REGISTERs answered from the response cache.", rs.Retransmitted)
		c("sip_store_errors_total", "Location or account store failures.", rs.StoreErrors)
		g("relay_sessions", "Media relay sessions (one per relayed stream).", float64(s2.relay.Sessions()))
		ds := s2.dns.Stats()
		c("dns_queries_total", "DNS queries answered.", ds.Queries)
		c("dns_mesh_queries_total", "DNS queries in the .mesh zone.", ds.Mesh)
		c("dns_forwarded_queries_total", "DNS queries forwarded upstream.", ds.Forwarded)
		c("dns_synthesized_total", "DNS64-synthesised AAAA answers.", ds.Synthesized)
		c("dns_cache_hits_total", "Upstream look-ups answered from the cache.", ds.CacheHits)
		c("dns_rate_limited_total", "DNS queries dropped by the rate limit.", ds.RateLimited)
		c("dns_malformed_total", "DNS messages that did not parse.", ds.Malformed)
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
			c("dhcp_malformed_total", "Datagrams that are not DHCP client messages served here.", h.Malformed)
			c("dhcp_ignored_total", "Valid DHCP messages left unanswered.", h.Ignored)
			c("dhcp_persist_errors_total", "Lease file writes that failed.", h.PersistErrors)
		}
	}
	return w.Flush()
}

// uptime is how long the node has run.
func (n *Node) uptime() time.Duration { return time.Since(n.start) }
