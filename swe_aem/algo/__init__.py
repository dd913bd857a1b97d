"""Pure algorithm code: entropy, advantage estimators, AEM, policy losses. No I/O."""
