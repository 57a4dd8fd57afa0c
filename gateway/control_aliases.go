package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/sipmesh/sipmesh/registrar"
)

// The dial plan's aliases on the control socket (sipmesh alias): read,
// set and delete a name's alias in the DHT (registrar.DHTAliases), signed
// by this node like the forwards.

// aliasBody is what PUT /aliases/{name} takes.
type aliasBody struct {
	Target string `json:"target"`
}

// aliases is the node's alias store.
func (n *Node) aliases() *registrar.DHTAliases { return &registrar.DHTAliases{DHT: n.svc.dht} }

// handleAlias answers GET /aliases/{name}.
func (s *controlServer) handleAlias(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	a, err := s.node.aliases().Alias(ctx, r.PathValue("name"))
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, controlError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// handleSetAlias answers PUT /aliases/{name} (a target) and DELETE (none).
func (s *controlServer) handleSetAlias(w http.ResponseWriter, r *http.Request) {
	var body aliasBody
	if r.Method == http.MethodPut {
		dec := json.NewDecoder(io.LimitReader(r.Body, maxControlBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil || body.Target == "" {
			writeJSON(w, http.StatusBadRequest, controlError{"want {\"target\": EXT or sip: URI}"})
			return
		}
	}
	a := registrar.Alias{Name: r.PathValue("name"), Target: body.Target, Updated: time.Now()}
	if err := a.Check(); err != nil {
		writeJSON(w, http.StatusBadRequest, controlError{err.Error()})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if err := s.node.aliases().SetAlias(ctx, a); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, controlError{err.Error()})
		return
	}
	s.log.Info("alias changed", "name", a.Name, "target", a.Target)
	writeJSON(w, http.StatusOK, a)
}

// Alias asks the node for name's alias (an empty Target: none).
func (c *ControlClient) Alias(ctx context.Context, name string) (registrar.Alias, error) {
	var a registrar.Alias
	err := c.do(ctx, http.MethodGet, "/aliases/"+url.PathEscape(name), nil, &a)
	return a, err
}

// SetAlias makes name an alias of target (an extension or a sip: URI);
// an empty target deletes it.
func (c *ControlClient) SetAlias(ctx context.Context, name, target string) (registrar.Alias, error) {
	var a registrar.Alias
	if target == "" {
		err := c.do(ctx, http.MethodDelete, "/aliases/"+url.PathEscape(name), nil, &a)
		return a, err
	}
	err := c.do(ctx, http.MethodPut, "/aliases/"+url.PathEscape(name), aliasBody{Target: target}, &a)
	return a, err
}
