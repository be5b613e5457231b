"""Text-to-4D (MAV3D, Singer et al. 2023): a HexPlane radiance field rendered into videos and
optimised by score distillation from a text-to-video diffusion prior (`herd 4d`)."""
