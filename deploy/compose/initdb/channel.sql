-- The channel's PostgreSQL (deploy/compose.yaml): the shared medium of the AU-SG channel
-- and each endpoint's own state database.
CREATE DATABASE au_sg_medium;
CREATE DATABASE channel_au;
CREATE DATABASE channel_sg;
