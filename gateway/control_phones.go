package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
)

// The control socket's phone bindings (phones.go): GET /phones lists
// them, POST /phones binds one (AddPhoneRequest), DELETE /phones/{mac}
// forgets one. The socket is local (mode 0660), so a password given by the
// operator may cross it; answers never carry one.

func (s *controlServer) handlePhones(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.node.Phones())
}

func (s *controlServer) handleAddPhone(w http.ResponseWriter, r *http.Request) {
	var req AddPhoneRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxControlBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, controlError{"bad phone binding: " + err.Error()})
		return
	}
	info, err := s.node.AddPhone(r.Context(), req)
	if err != nil {
		writeJSON(w, phoneErrorCode(err), controlError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *controlServer) handleDeletePhone(w http.ResponseWriter, r *http.Request) {
	info, err := s.node.RemovePhone(r.PathValue("mac"))
	if err != nil {
		writeJSON(w, phoneErrorCode(err), controlError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func phoneErrorCode(err error) int {
	if errors.Is(err, errBadPhone) {
		return http.StatusBadRequest
	}
	return accountErrorCode(err)
}

// Phones lists the node's phone bindings.
func (c *ControlClient) Phones(ctx context.Context) ([]PhoneInfo, error) {
	var out []PhoneInfo
	err := c.do(ctx, http.MethodGet, "/phones", nil, &out)
	return out, err
}

// AddPhone binds a phone to an extension on the node.
func (c *ControlClient) AddPhone(ctx context.Context, req AddPhoneRequest) (PhoneInfo, error) {
	var out PhoneInfo
	err := c.do(ctx, http.MethodPost, "/phones", req, &out)
	return out, err
}

// DeletePhone forgets the binding of mac on the node.
func (c *ControlClient) DeletePhone(ctx context.Context, mac string) (PhoneInfo, error) {
	var out PhoneInfo
	err := c.do(ctx, http.MethodDelete, "/phones/"+url.PathEscape(mac), nil, &out)
	return out, err
}
