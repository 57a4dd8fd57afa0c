package webui

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// page builds one HTML page; every value goes through text (escaped).
type page struct {
	b    strings.Builder
	sess *session
	id   string // the session's ID
}

func (p *page) raw(s string) *page  { p.b.WriteString(s); return p }
func (p *page) text(s string) *page { p.b.WriteString(html.EscapeString(s)); return p }
func (p *page) textf(format string, a ...any) *page {
	return p.text(fmt.Sprintf(format, a...))
}

// csrf writes the hidden CSRF field of a form.
func (p *page) csrf() *page {
	if p.sess != nil {
		p.raw(`<input type="hidden" name="` + csrfField + `" value="`).text(p.sess.csrf).raw(`">`)
	}
	return p
}

var nav = [][2]string{{"/mesh", "Mesh"}, {"/calls", "Calls"}, {"/phones", "Phones"}, {"/subscribers", "Subscribers"}, {"/node", "Node"}}

func (s *Server) begin(r *http.Request, title string) *page {
	id, sess := s.current(r)
	p := &page{sess: sess, id: id}
	name := s.cfg.Backend.Node().Name
	p.raw(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>`).
		text(title + " · " + name).raw(`</title><link rel="stylesheet" href="/static/style.css"></head><body><header><b>sipmesh</b> <span>`).text(name).raw(`</span><nav>`)
	for _, n := range nav {
		cls := ""
		if r.URL.Path == n[0] {
			cls = ` class="on"`
		}
		p.raw(`<a href="` + n[0] + `"` + cls + `>` + n[1] + `</a>`)
	}
	if sess != nil {
		p.raw(`<form method="post" action="/logout" class="inline">`).csrf().raw(`<button>Log out</button></form>`)
	} else {
		p.raw(`<a href="/login">Log in</a>`)
	}
	p.raw(`</nav></header><main><h1>`).text(title).raw(`</h1>`)
	return p
}

func (p *page) end(w http.ResponseWriter) {
	p.raw(`</main></body></html>`)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write([]byte(p.b.String()))
}

// table writes a table with a header row; rows are already escaped cells.
func (p *page) table(id string, head []string, rows [][]string, empty string) {
	if len(rows) == 0 {
		p.raw(`<p class="empty"`)
		if id != "" {
			p.raw(` id="` + id + `"`)
		}
		p.raw(`>`).text(empty).raw(`</p>`)
		return
	}
	p.raw(`<div class="scroll"><table`)
	if id != "" {
		p.raw(` id="` + id + `"`)
	}
	p.raw(`><thead><tr>`)
	for _, h := range head {
		p.raw(`<th>`).text(h).raw(`</th>`)
	}
	p.raw(`</tr></thead><tbody>`)
	for _, r := range rows {
		p.raw(`<tr>`)
		for i, c := range r {
			p.raw(`<td data-h="`).text(head[i]).raw(`">`).raw(c).raw(`</td>`)
		}
		p.raw(`</tr>`)
	}
	p.raw(`</tbody></table></div>`)
}

func esc(s string) string { return html.EscapeString(s) }

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func (s *Server) mesh(w http.ResponseWriter, r *http.Request) {
	st := s.cfg.Backend.Mesh()
	p := s.begin(r, "Mesh")
	p.raw(`<p class="card">This node <code>`).text(st.ID).raw(`</code> · <code>`).text(st.Addr).raw(`</code></p><h2>Radio links</h2>`)
	var rows [][]string
	for _, nb := range st.Neighbours {
		q := int(nb.Quality*100 + 0.5)
		bar := `<span class="bar"><i style="width:` + strconv.Itoa(q) + `%"></i></span> ` + strconv.Itoa(q) + `%`
		rows = append(rows, []string{`<code title="` + esc(nb.ID) + `">` + esc(short(nb.ID)) + `</code>`, esc(nb.Interface), bar, esc(fmt.Sprintf("%.0f ms ago", nb.LastSeen))})
	}
	p.table("neighbours", []string{"Neighbour", "Interface", "Link quality", "Last heard"}, rows, "No neighbour heard.")
	p.raw(`<h2>Virtual ring</h2>`)
	rows = nil
	for _, pr := range st.Predecessors {
		rows = append(rows, []string{"predecessor", `<code title="` + esc(pr.ID) + `">` + esc(short(pr.ID)) + `</code>`, esc(routeString(pr.Route)), strconv.Itoa(len(pr.Route))})
	}
	for _, sc := range st.Successors {
		rows = append(rows, []string{"successor", `<code title="` + esc(sc.ID) + `">` + esc(short(sc.ID)) + `</code>`, esc(routeString(sc.Route)), strconv.Itoa(len(sc.Route))})
	}
	p.table("ring", []string{"Role", "Node", "Source route", "Hops"}, rows, "No ring neighbour yet.")
	p.raw(`<h2>Fingers</h2>`)
	if len(st.Fingers) == 0 {
		p.raw(`<p class="empty">None.</p>`)
	} else {
		p.raw(`<p class="fingers">`)
		for _, f := range st.Fingers {
			p.raw(`<code title="`).text(f).raw(`">`).text(short(f)).raw(`</code> `)
		}
		p.raw(`</p>`)
	}
	p.raw(`<p class="small">Route cache: `).text(strconv.Itoa(st.CacheEntries)).raw(` entries. Counters: <a href="/metrics">/metrics</a>.</p>`)
	p.end(w)
}

func routeString(route []string) string {
	out := make([]string, len(route))
	for i, r := range route {
		out[i] = short(r)
	}
	return strings.Join(out, " → ")
}

func (s *Server) calls(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	calls := s.cfg.Backend.Calls(ctx)
	var rows [][]string
	for _, c := range calls {
		state := "ringing"
		if c.Answered {
			state = "up " + c.Age.Truncate(time.Second).String()
		}
		path := "on this node"
		if c.Remote != "" {
			path = `<code>` + esc(routeString(c.Path)) + `</code>`
			if len(c.Path) == 0 {
				path = `<code>→ ` + esc(short(c.Remote)) + `</code>`
			}
		}
		hops := "–"
		if c.Remote != "" && c.Hops > 0 {
			hops = strconv.Itoa(c.Hops)
		}
		var legs []string
		for _, l := range c.Legs {
			mos := "–"
			cls := ""
			if l.MOS > 0 {
				mos = fmt.Sprintf("%.2f", l.MOS)
				switch {
				case l.MOS >= 4:
					cls = "good"
				case l.MOS >= 3.6:
					cls = "fair"
				default:
					cls = "poor"
				}
			}
			legs = append(legs, fmt.Sprintf(`<span class="leg %s">%s: MOS <b class="mos">%s</b> · loss %.1f%% · jitter %.1f ms · %d pkts</span>`,
				cls, esc(l.Side), mos, l.LossPct, l.JitterMs, l.Packets))
		}
		rows = append(rows, []string{esc(c.From), esc(c.To), esc(state), path, hops, strings.Join(legs, "<br>")})
	}
	if r.URL.Query().Get("part") == "table" {
		// The live update: the table alone (static/app.js swaps it in).
		p := &page{}
		p.table("calls", []string{"Caller", "Callee", "State", "Mesh path", "Hops", "Media per leg"}, rows, "No call through this node.")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write([]byte(p.b.String()))
		return
	}
	p := s.begin(r, "Calls")
	p.raw(`<p class="small">Calls whose media this node relays; updates every 2 s.</p><div id="live" data-src="/calls?part=table">`)
	p.table("calls", []string{"Caller", "Callee", "State", "Mesh path", "Hops", "Media per leg"}, rows, "No call through this node.")
	p.raw(`</div><script src="/static/app.js"></script>`)
	p.end(w)
}

func (s *Server) phones(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	phones, err := s.cfg.Backend.Phones(ctx)
	p := s.begin(r, "Phones")
	if err != nil {
		p.raw(`<p class="warn">`).text(err.Error()).raw(`</p>`)
	}
	var rows [][]string
	for _, ph := range phones {
		where := `<code title="` + esc(ph.Node) + `">` + esc(short(ph.Node)) + `</code>`
		if ph.NodeName != "" {
			where = esc(ph.NodeName) + " " + where
		}
		if ph.Here {
			where = "<b>this node</b>"
		}
		left := ph.Expires.Sub(s.cfg.Now()).Truncate(time.Second)
		rows = append(rows, []string{esc(ph.Ext), esc(ph.Display), where, `<code>` + esc(ph.Contact) + `</code>`, esc(left.String())})
	}
	p.table("phones", []string{"Extension", "Name", "Registered at", "Contact", "Expires in"}, rows, "No phone registered.")
	p.end(w)
}

func (s *Server) subscribers(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	users, err := s.cfg.Backend.Users(ctx)
	p := s.begin(r, "Subscribers")
	if m := s.sessions.takeFlash(p.id); m != "" {
		p.raw(`<p class="note" id="msg">`).text(m).raw(`</p>`)
	}
	if err != nil {
		p.raw(`<p class="warn">`).text(err.Error()).raw(`</p>`)
	}
	admin := p.sess != nil
	var rows [][]string
	for _, u := range users {
		row := []string{esc(u.Ext), esc(u.Display), esc(u.Updated.UTC().Format("2006-01-02 15:04"))}
		if admin {
			var q page
			q.sess = p.sess
			q.raw(`<form method="post" action="/subscribers/delete" class="inline">`).csrf().
				raw(`<input type="hidden" name="ext" value="`).text(u.Ext).raw(`"><button class="danger">Remove</button></form>`)
			row = append(row, q.b.String())
		}
		rows = append(rows, row)
	}
	head := []string{"Extension", "Name", "Changed (UTC)"}
	if admin {
		head = append(head, "")
	}
	p.table("subscribers", head, rows, "No subscriber yet.")
	switch {
	case !admin:
		p.raw(`<p class="small"><a href="/login">Log in</a> to add or remove subscribers.</p>`)
	case !s.cfg.Backend.Node().CanManage:
		p.raw(`<p class="warn">This node has no admin-key: manage subscribers on a node that holds the mesh administrator key.</p>`)
	default:
		p.raw(`<h2>Add a subscriber or reset a password</h2><form method="post" action="/subscribers" class="card grid">`).csrf().
			raw(`<label>Extension <input name="ext" required pattern="[0-9A-Za-z._-]+" inputmode="numeric"></label>`).
			raw(`<label>Name <input name="display"></label>`).
			raw(`<label>Password <input type="password" name="password" required autocomplete="new-password"></label>`)
		if _, ok := s.cfg.Backend.(PhoneBinder); ok {
			p.raw(`<label>Phone MAC on this node (optional) <input name="mac" placeholder="00:15:65:a1:b2:c3"></label>`)
		}
		p.raw(`<button>Store</button></form>`)
	}
	p.end(w)
}

func (s *Server) node(w http.ResponseWriter, r *http.Request) {
	n := s.cfg.Backend.Node()
	p := s.begin(r, "Node")
	up := s.cfg.Now().Sub(n.Start).Truncate(time.Second)
	rows := [][]string{{"Name", esc(n.Name)}, {"Node ID", `<code>` + esc(n.ID) + `</code>`}, {"Mesh address", `<code>` + esc(n.Addr) + `</code>`},
		{"LAN address", esc(n.LAN)}, {"Version", esc(n.Version)}, {"Up", esc(up.String())}}
	for _, kv := range n.Config {
		rows = append(rows, []string{esc(kv[0]), `<code>` + esc(kv[1]) + `</code>`})
	}
	p.table("node", []string{"Setting", "Value"}, rows, "")
	p.raw(`<h2>Log</h2>`)
	if s.cfg.Logs == nil {
		p.raw(`<p class="empty">No log kept.</p>`)
	} else {
		lines := s.cfg.Logs.Lines()
		p.raw(`<pre class="log">`)
		for i := len(lines) - 1; i >= 0; i-- { // newest first
			p.text(lines[i]).raw("\n")
		}
		p.raw(`</pre>`)
	}
	p.end(w)
}
