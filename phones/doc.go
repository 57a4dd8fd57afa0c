// Package phones owns the telephone features a node answers itself and a
// simulated phone.
//
// Features: the echo test (3246 or "echo", echo.go), a small UAS that
// answers a LAN phone's call with an RTP endpoint echoing its G.711 audio;
// and the party line (426 and rooms 4260–4269, conference.go): a UAS per
// room member and a G.711 μ-law/A-law mixer (mixer.go: per-member jitter
// buffer, sum with clipping, each member's own voice removed) that runs,
// 20 ms a tick, only while the room has members, with a short tone when
// someone enters or leaves. Both share the UAS dialog handling of
// uasdialog.go. The node's SIP service (package proxy) hands a feature its
// requests, decides which node runs a room (the ring owner of the room's
// key) and lends a feature what it needs of a SIP stack through an
// interface (EchoHost, ConfHost); a feature imports neither the proxy, the
// registrar nor the daemon.
// The proxy owns call forwarding (unconditional, busy, no answer,
// unreachable; feature codes *72/*73, confirmed by EchoService.Announce
// here), ring and hunt groups and keeping a MESSAGE for an offline phone; the
// simulated phone sends and receives MESSAGE (message.go).
// A room moves when its node dies (roommove.go): the members who came
// over the mesh are recorded (RoomStore, the DHT) and re-INVITEd by the
// room's next node on the ring.
// The busy lamp field (blf.go): SUBSCRIBE/NOTIFY for the dialog event
// package (RFC 6665, RFC 4235) answered by the node an extension is
// registered through, which the proxy tells of its phones' dialogs.
// The dial plan's aliases are the proxy's (registrar.Alias in the DHT).
// Planned, not here yet: the phone book; extension numbers are
// today only checked by the registrar (registrar.ValidExt).
//
// The simulated phone (Phone, on emiago/sipgo) behaves like a desk phone
// behind a proxy: it registers with digest authentication (MD5, SHA-256 per
// RFC 8760), places calls with an SDP offer (RFC 3264) and answers them,
// keeps the dialog's route set (Record-Route, RFC 3261 §12), sends rport
// (RFC 3581), cancels, hangs up and answers re-INVITEs. Each call sends the
// phone's own tone and detects the other side's, so a test proves two-way
// audio, and reports setup time, post-dial delay, final status and the
// E-model MOS of what it received. Its media (MediaEndpoint: G.711 RTP per
// RFC 3550/3551, a tone generator and a Goertzel tone detector, whose
// Level and FrameLevel pick one voice out of a party line's mix) serves
// the echo test too; the demo and the tests use the phone.
package phones
