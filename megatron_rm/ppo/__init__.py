"""PPO with an actor, a critic, a reward model and a KL-controlled reference policy."""
