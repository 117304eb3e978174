package authentiktest_test

import (
	"context"
	"fmt"
	"net/http"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// A user logs in and out; the event API then holds what authentik 2026.2
// would record: model_updated (last_login), login, logout.
func Example() {
	ak, err := authentiktest.Start(authentiktest.Config{})
	if err != nil {
		panic(err)
	}
	defer ak.Close()
	if _, err := ak.AddUser(authentiktest.UserSpec{Username: "alice", Email: "alice@example.com", Password: "pw"}); err != nil {
		panic(err)
	}
	browser, err := ak.Login("alice", "pw")
	if err != nil {
		panic(err)
	}
	res, err := authentiktest.RunFlow(context.Background(), browser, ak.URL(), ak.Flows().Invalidation, nil)
	if err != nil {
		panic(err)
	}
	fmt.Println(res.Component)
	for _, e := range ak.Events() {
		fmt.Println(e.Action, e.User["username"])
	}
	req, _ := http.NewRequest("GET", ak.URL()+"/api/v3/core/users/me/", nil)
	resp, err := browser.Do(req)
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode)
	// Output:
	// xak-flow-redirect
	// model_updated alice
	// login alice
	// logout alice
	// 403
}
