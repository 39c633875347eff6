"""A random full-size ViT-B/32 CLIP (CLIPConfig() sizes) in scratch/full-vit-b32, with numpy only.

For speed and fidelity checks where torch is not installed (scripts/bench_vs_python.py makes its
own with transformers). Weights are normal with CLIP-like init scales, seed 1234; tokenizer and
processor files come from tests/fixtures/tiny-clip. Run from the repository root:
    python3 scripts/make_random_vit_b32.py
"""
import json, struct, numpy as np, shutil, os
d='scratch/full-vit-b32'
os.makedirs(d, exist_ok=True)
cfg=json.load(open('tests/fixtures/tiny-clip/config.json'))
cfg['projection_dim']=512; cfg['initializer_factor']=1.0
cfg['text_config'].update(hidden_size=512,intermediate_size=2048,num_attention_heads=8,num_hidden_layers=12,projection_dim=512,initializer_factor=1.0)
cfg['vision_config'].update(hidden_size=768,intermediate_size=3072,num_attention_heads=12,num_hidden_layers=12,projection_dim=512,initializer_factor=1.0)
json.dump(cfg,open(f'{d}/config.json','w'),indent=2)
for f in ['tokenizer.json','tokenizer_config.json','preprocessor_config.json']:
    shutil.copy(f'tests/fixtures/tiny-clip/{f}', d)
rng=np.random.default_rng(1234)

def n(shape,std): return (rng.standard_normal(shape,dtype=np.float32)*std)
t={}
t['logit_scale']=np.array(2.6592,dtype=np.float32)
def tower(p,dm,ff,L):
    ins=dm**-0.5*(2*L)**-0.5; outs=dm**-0.5; fcs=(2*dm)**-0.5
    for i in range(L):
        q=f'{p}.encoder.layers.{i}'
        for nm in ['layer_norm1','layer_norm2']:
            t[f'{q}.{nm}.weight']=np.ones(dm,np.float32); t[f'{q}.{nm}.bias']=n(dm,0.02)
        for nm in ['q_proj','k_proj','v_proj']:
            t[f'{q}.self_attn.{nm}.weight']=n((dm,dm),ins); t[f'{q}.self_attn.{nm}.bias']=n(dm,0.02)
        t[f'{q}.self_attn.out_proj.weight']=n((dm,dm),outs); t[f'{q}.self_attn.out_proj.bias']=n(dm,0.02)
        t[f'{q}.mlp.fc1.weight']=n((ff,dm),fcs); t[f'{q}.mlp.fc1.bias']=n(ff,0.02)
        t[f'{q}.mlp.fc2.weight']=n((dm,ff),ins); t[f'{q}.mlp.fc2.bias']=n(dm,0.02)
tower('text_model',512,2048,12); tower('vision_model',768,3072,12)
t['text_model.embeddings.position_embedding.weight']=n((77,512),0.01)
t['text_model.embeddings.token_embedding.weight']=n((49408,512),0.02)
t['text_model.final_layer_norm.weight']=np.ones(512,np.float32); t['text_model.final_layer_norm.bias']=np.zeros(512,np.float32)
t['text_projection.weight']=n((512,512),512**-0.5)
t['vision_model.embeddings.class_embedding']=n(768,768**-0.5)
t['vision_model.embeddings.patch_embedding.weight']=n((768,3,32,32),0.02)
t['vision_model.embeddings.position_embedding.weight']=n((50,768),0.02)
for nm in ['pre_layrnorm','post_layernorm']:
    t[f'vision_model.{nm}.weight']=np.ones(768,np.float32); t[f'vision_model.{nm}.bias']=np.zeros(768,np.float32)
t['visual_projection.weight']=n((512,768),768**-0.5)
hdr={}; off=0
for k,v in t.items():
    b=v.nbytes; hdr[k]={'dtype':'F32','shape':list(v.shape),'data_offsets':[off,off+b]}; off+=b
h=json.dumps(hdr).encode(); h+=b' '*((8-len(h)%8)%8)
with open(f'{d}/model.safetensors','wb') as f:
    f.write(struct.pack('<Q',len(h))); f.write(h)
    for v in t.values(): f.write(np.ascontiguousarray(v).tobytes())
print('ok', off/1e6,'MB')
