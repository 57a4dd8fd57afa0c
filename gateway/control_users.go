package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/sipmesh/sipmesh/registrar"
)

// UserInfo is what the control socket shows of an account: never the
// HA1 values, which are password equivalents for digest authentication.
type UserInfo struct {
	Ext     string    `json:"ext"`
	Display string    `json:"display,omitempty"`
	Updated time.Time `json:"updated"`
}

func userInfo(a registrar.Account) UserInfo {
	return UserInfo{Ext: a.Ext, Display: a.Display, Updated: a.Updated}
}

// maxControlBody bounds request bodies on the control socket.
const maxControlBody = 64 << 10

func (s *controlServer) handleUsers(w http.ResponseWriter, r *http.Request) {
	accts, err := s.node.accounts.ListAccounts(r.Context())
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, controlError{err.Error()})
		return
	}
	out := make([]UserInfo, 0, len(accts))
	for _, a := range accts {
		out = append(out, userInfo(a))
	}
	writeJSON(w, http.StatusOK, out)
}

// handleAddUser stores an account (new or changed password): the client
// computed the HA1 values (NewAccount), so the password never reaches the
// node; the node signs the record with the mesh administrator key.
func (s *controlServer) handleAddUser(w http.ResponseWriter, r *http.Request) {
	var a registrar.Account
	dec := json.NewDecoder(io.LimitReader(r.Body, maxControlBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		writeJSON(w, http.StatusBadRequest, controlError{"bad account: " + err.Error()})
		return
	}
	a, err := s.node.storeAccount(r.Context(), a)
	if err != nil {
		writeJSON(w, accountErrorCode(err), controlError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, userInfo(a))
}

func (s *controlServer) handleDeleteUser(w http.ResponseWriter, r *http.Request) {
	old, err := s.node.removeAccount(r.Context(), r.PathValue("ext"))
	if err != nil {
		writeJSON(w, accountErrorCode(err), controlError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, userInfo(old))
}

// Errors of storeAccount and removeAccount that are the caller's.
var (
	errNoAdminKey = errors.New("this node has no admin-key configured: subscribers are managed on a node that holds the mesh administrator key")
	errBadAccount = errors.New("bad account")
)

func accountErrorCode(err error) int {
	switch {
	case errors.Is(err, errBadAccount):
		return http.StatusBadRequest
	case errors.Is(err, errNoAdminKey):
		return http.StatusForbidden
	case errors.Is(err, registrar.ErrNoAccount):
		return http.StatusNotFound
	case errors.Is(err, registrar.ErrStaleRecord):
		return http.StatusConflict
	}
	return http.StatusServiceUnavailable
}

// storeAccount signs a (new or changed) with the administrator key and
// stores it in the DHT; the control socket and the web UI both come here.
func (n *Node) storeAccount(ctx context.Context, a registrar.Account) (registrar.Account, error) {
	// Versions are ordered by the node's clock, never the client's.
	a.Updated = time.Now().UTC().Truncate(time.Millisecond)
	if old, err := n.accounts.Account(ctx, a.Ext); err == nil && !a.Updated.After(old.Updated) {
		a.Updated = old.Updated.Add(time.Millisecond)
	}
	if err := a.Validate(); err != nil {
		return a, fmt.Errorf("%w: %v", errBadAccount, err)
	}
	if err := n.putRecord(ctx, a, false); err != nil {
		return a, err
	}
	n.log.Info("subscriber stored", "ext", a.Ext)
	return a, nil
}

// removeAccount replaces ext's account with a signed tombstone and returns
// the account it had.
func (n *Node) removeAccount(ctx context.Context, ext string) (registrar.Account, error) {
	old, err := n.accounts.Account(ctx, ext)
	if errors.Is(err, registrar.ErrNoAccount) {
		return old, fmt.Errorf("no subscriber %q: %w", ext, err)
	}
	if err != nil {
		return old, err
	}
	tomb := registrar.Account{Ext: ext, Updated: time.Now().UTC().Truncate(time.Millisecond)}
	if !tomb.Updated.After(old.Updated) {
		tomb.Updated = old.Updated.Add(time.Millisecond)
	}
	if err := n.putRecord(ctx, tomb, true); err != nil {
		return old, err
	}
	n.log.Info("subscriber removed", "ext", ext)
	return old, nil
}

func (n *Node) putRecord(ctx context.Context, a registrar.Account, deleted bool) error {
	if n.admin == nil {
		return errNoAdminKey
	}
	rec, err := registrar.SignAccount(n.admin, a, deleted)
	if err != nil {
		return fmt.Errorf("%w: %v", errBadAccount, err)
	}
	return n.accounts.PutRecord(ctx, rec)
}

// do sends a request with an optional JSON body and decodes the answer.
func (c *ControlClient) do(ctx context.Context, method, endpoint string, body, v any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://sipmesh"+endpoint, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.roundTrip(ctx, req)
	if err != nil {
		return fmt.Errorf("control socket %s: %w: %v", c.path, ErrNoNode, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("control socket %s: reading answer: %w", c.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var ce controlError
		if json.Unmarshal(b, &ce) == nil && ce.Error != "" {
			return errors.New(ce.Error)
		}
		return fmt.Errorf("control socket %s: %s", c.path, resp.Status)
	}
	if raw, ok := v.(*json.RawMessage); ok {
		*raw = b
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("control socket %s: bad answer: %w", c.path, err)
	}
	return nil
}

// Users lists the node's subscribers.
func (c *ControlClient) Users(ctx context.Context) ([]UserInfo, error) {
	var out []UserInfo
	err := c.do(ctx, http.MethodGet, "/users", nil, &out)
	return out, err
}

// AddUser stores account a (from NewAccount) on the node.
func (c *ControlClient) AddUser(ctx context.Context, a registrar.Account) (UserInfo, error) {
	var out UserInfo
	err := c.do(ctx, http.MethodPost, "/users", a, &out)
	return out, err
}

// DeleteUser removes the subscriber ext.
func (c *ControlClient) DeleteUser(ctx context.Context, ext string) (UserInfo, error) {
	var out UserInfo
	err := c.do(ctx, http.MethodDelete, "/users/"+url.PathEscape(ext), nil, &out)
	return out, err
}
