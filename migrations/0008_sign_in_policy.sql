-- A project's sign-in policy as JSON (records::sign_in::SignInPolicy): OTP guessing limits per client
-- network and email, who may sign up, and how long auth events are kept. `{}` means the defaults.
ALTER TABLE projects ADD COLUMN sign_in_json TEXT NOT NULL DEFAULT '{}';
