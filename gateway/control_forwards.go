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

// Call forwarding on the control socket (sipmesh forward): read and set an
// extension's forwards in the DHT (registrar.DHTForwards), signed by this
// node as a phone's *72/*73 is; the newest change wins wherever it was
// made.

// forwards is the node's forward store.
func (n *Node) forwards() *registrar.DHTForwards { return &registrar.DHTForwards{DHT: n.svc.dht} }

// handleForward answers GET /forwards/{ext}.
func (s *controlServer) handleForward(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	ext := r.PathValue("ext")
	if err := registrar.ValidExt(ext); err != nil {
		writeJSON(w, http.StatusBadRequest, controlError{err.Error()})
		return
	}
	f, err := s.node.forwards().Forward(ctx, ext)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, controlError{err.Error()})
		return
	}
	f.Ext = ext
	writeJSON(w, http.StatusOK, f)
}

// handleSetForward answers PUT /forwards/{ext}: the whole forwarding of
// the extension (every empty target off).
func (s *controlServer) handleSetForward(w http.ResponseWriter, r *http.Request) {
	var f registrar.Forward
	dec := json.NewDecoder(io.LimitReader(r.Body, maxControlBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		writeJSON(w, http.StatusBadRequest, controlError{"want a Forward: {\"always\", \"busy\", \"no_answer\", \"no_answer_after\", \"unreachable\"}"})
		return
	}
	f.Ext, f.Updated = r.PathValue("ext"), time.Now()
	if err := f.Check(); err != nil {
		writeJSON(w, http.StatusBadRequest, controlError{err.Error()})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if err := s.node.forwards().SetForward(ctx, f); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, controlError{err.Error()})
		return
	}
	s.log.Info("forwarding changed", "ext", f.Ext, "always", f.Always, "busy", f.Busy, "no_answer", f.NoAnswer, "unreachable", f.Unreachable)
	writeJSON(w, http.StatusOK, f)
}

// Forward asks the node for ext's forwarding.
func (c *ControlClient) Forward(ctx context.Context, ext string) (registrar.Forward, error) {
	var f registrar.Forward
	err := c.do(ctx, http.MethodGet, "/forwards/"+url.PathEscape(ext), nil, &f)
	return f, err
}

// SetForward replaces f.Ext's forwarding with f.
func (c *ControlClient) SetForward(ctx context.Context, f registrar.Forward) (registrar.Forward, error) {
	var out registrar.Forward
	err := c.do(ctx, http.MethodPut, "/forwards/"+url.PathEscape(f.Ext), f, &out)
	return out, err
}
