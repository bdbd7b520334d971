// Command rulesconfig writes the demo's variant of the rules config: rules/config.yaml with the
// overrides of test/demo/rules-overrides.yaml deep-merged on top (maps merge key by key, anything
// else is replaced). Only the overrides are committed, so the demo follows every change of the
// real config and cannot drift from it.
//
//	go run ./test/demo/rulesconfig -base rules/config.yaml -overrides test/demo/rules-overrides.yaml -out .demo/rules-config.yaml
package main
