package gateway

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/sipmesh/sipmesh/registrar"
)

// BindingInfo is a current registration as the control socket shows it.
type BindingInfo struct {
	Node    string    `json:"node"` // ID of the node the phone registered with
	Contact string    `json:"contact"`
	Expires time.Time `json:"expires"`
	Source  string    `json:"source,omitempty"`
}

// handleBindings answers GET /bindings/{ext}: the extension's current
// bindings as this node finds them in the location service (the DHT),
// whichever node they were registered with.
func (s *controlServer) handleBindings(w http.ResponseWriter, r *http.Request) {
	ext := r.PathValue("ext")
	if err := registrar.ValidExt(ext); err != nil {
		writeJSON(w, http.StatusBadRequest, controlError{err.Error()})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	all, err := s.node.Locations().Bindings(ctx, registrar.AOR(ext))
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, controlError{err.Error()})
		return
	}
	out := []BindingInfo{}
	for _, b := range registrar.MergeBindings(all, time.Now()) {
		bi := BindingInfo{Node: b.Node.String(), Contact: b.Contact, Expires: b.Expires}
		if b.Source.IsValid() {
			bi.Source = b.Source.String()
		}
		out = append(out, bi)
	}
	writeJSON(w, http.StatusOK, out)
}

// Bindings asks the node for ext's current bindings.
func (c *ControlClient) Bindings(ctx context.Context, ext string) ([]BindingInfo, error) {
	var out []BindingInfo
	err := c.do(ctx, http.MethodGet, "/bindings/"+url.PathEscape(ext), nil, &out)
	return out, err
}
